package clock

import (
	"testing"
	"time"
)

func TestFakeTickerAndAfter(t *testing.T) {
	start := time.Unix(100, 0)
	f := NewFake(start)
	tk := f.NewTicker(100 * time.Millisecond)
	after := f.After(250 * time.Millisecond)
	f.Advance(99 * time.Millisecond)
	select {
	case <-tk.C():
		t.Fatal("ticked early")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-tk.C(); !got.Equal(start.Add(100 * time.Millisecond)) {
		t.Fatal(got)
	}
	// A jump over several periods delivers one tick, like a late reader.
	f.Advance(500 * time.Millisecond)
	<-tk.C()
	select {
	case <-tk.C():
		t.Fatal("more than one buffered tick")
	default:
	}
	if got := <-after; !got.Equal(start.Add(250 * time.Millisecond)) {
		t.Fatal(got)
	}
	if !f.Now().Equal(start.Add(600 * time.Millisecond)) {
		t.Fatal(f.Now())
	}
	tk.Stop()
	f.Advance(time.Second)
	select {
	case <-tk.C():
		t.Fatal("stopped ticker ticked")
	default:
	}
}

func TestFakeStepCountsBufferedTicks(t *testing.T) {
	f := NewFake(time.Unix(100, 0))
	tk := f.NewTicker(time.Second)
	if n := f.Step(time.Second); n != 1 {
		t.Fatalf("first tick: %d", n)
	}
	if n := f.Step(time.Second); n != 0 { // the buffer is still full
		t.Fatalf("tick on a full buffer counted: %d", n)
	}
	<-tk.C()
}

// A hand-over clock returns from Step only once the reader took the tick;
// a loop takes a tick only after it handled the previous one, so a second
// Step proves the first tick was handled, and a stopped ticker takes none.
func TestHandoverFakeHandsTicksToTheReader(t *testing.T) {
	start := time.Unix(100, 0)
	f := NewHandoverFake(start)
	tk := f.NewTicker(100 * time.Millisecond)
	handled := 0 // written by the loop, read by the test only after a hand-over
	seen := make(chan time.Time, 10)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer tk.Stop()
		for {
			select {
			case at := <-tk.C():
				seen <- f.Now()
				if at.Sub(start) >= 300*time.Millisecond {
					return // the loop ends while handling its third tick
				}
				handled++
			case <-quit:
				return
			}
		}
	}()
	if n := f.Step(99 * time.Millisecond); n != 0 {
		t.Fatalf("ticked early: %d", n)
	}
	if n := f.Step(time.Millisecond); n != 1 {
		t.Fatalf("first tick taken %d times", n)
	}
	if got := <-seen; !got.Equal(start.Add(100 * time.Millisecond)) {
		t.Fatalf("the reader saw Now() = %v", got)
	}
	// A jump over several periods hands over one tick; the reader sees the
	// new time.
	if n := f.Step(150 * time.Millisecond); n != 1 {
		t.Fatalf("a jump handed %d ticks", n)
	}
	if got := <-seen; !got.Equal(start.Add(250 * time.Millisecond)) {
		t.Fatalf("the reader saw Now() = %v after a jump", got)
	}
	if n := f.Step(50 * time.Millisecond); n != 1 { // tick at 300 ms: taken, and the loop ends
		t.Fatalf("third tick taken %d times", n)
	}
	if handled != 2 {
		t.Fatalf("handled %d ticks before the third was taken", handled)
	}
	if n := f.Step(100 * time.Millisecond); n != 0 {
		t.Fatalf("a stopped ticker took %d ticks", n)
	}
	<-done
	close(quit)
	// After keeps a buffer: an abandoned timer does not block Step.
	_ = f.After(time.Millisecond)
	if n := f.Step(time.Millisecond); n != 1 {
		t.Fatalf("After: %d", n)
	}
}
