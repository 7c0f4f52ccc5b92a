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
