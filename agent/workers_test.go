package agent

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Workers runs at most its bound at once and takes the waiting functions in
// the order they came.
func TestWorkersBoundAndOrder(t *testing.T) {
	w := NewWorkers(2)
	release := make(chan struct{})
	started := make(chan int, 10)
	var running, peak atomic.Int32
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		w.Go(func() {
			defer wg.Done()
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			started <- i
			<-release
			running.Add(-1)
		})
	}
	// Two run; Go queued the other four before it returned.
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("the first two functions did not start")
		}
	}
	if got := w.Waiting(); got != 4 {
		t.Fatalf("waiting = %d, want 4", got)
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Fatalf("%d functions ran at once, want at most 2 (and 2 reached)", p)
	}
	// The two first ones in either order, then the queue in order.
	if !slices.Equal(order[2:], []int{2, 3, 4, 5}) {
		t.Fatalf("order %v: the waiting functions did not run in the order they came", order)
	}
	if got := w.Waiting(); got != 0 {
		t.Fatalf("waiting = %d after all ran", got)
	}
	// Idle workers exit; the next call starts one again.
	done := make(chan struct{})
	w.Go(func() { close(done) })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a call after the queue emptied did not run")
	}
}

// A nil *Workers runs each function on a goroutine of its own, as a lone
// agent does: two that wait for each other both run.
func TestNilWorkersStartsAGoroutinePerCall(t *testing.T) {
	var w *Workers
	a, b := make(chan struct{}), make(chan struct{})
	w.Go(func() { close(a); <-b })
	w.Go(func() { <-a; close(b) })
	select {
	case <-b:
	case <-time.After(5 * time.Second):
		t.Fatal("the second function did not run beside the first")
	}
	if w.Waiting() != 0 {
		t.Fatal("a nil Workers has nothing waiting")
	}
}
