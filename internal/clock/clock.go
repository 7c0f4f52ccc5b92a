// Package clock lets timing logic run on real time in production and on a
// fake, manually advanced time in tests (no sleeping in tests).
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock is the time source of a component.
type Clock interface {
	Now() time.Time
	// NewTicker delivers ticks every d; Stop releases it.
	NewTicker(d time.Duration) Ticker
	// After delivers one value after d.
	After(d time.Duration) <-chan time.Time
}

// Ticker is a stoppable periodic timer.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the system clock (monotonic readings included).
type Real struct{}

func (Real) Now() time.Time                         { return time.Now() }
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (Real) NewTicker(d time.Duration) Ticker       { return realTicker{time.NewTicker(d)} }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a clock that moves only when Advance is called. Ticks are delivered
// on channels with a buffer of one, like time.Ticker: a slow reader misses
// ticks rather than blocking Advance.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	next   time.Time
	period time.Duration // 0: one-shot
	ch     chan time.Time
	done   bool
}

// NewFake starts a fake clock at start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *Fake) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{next: f.now.Add(d), ch: make(chan time.Time, 1)}
	f.timers = append(f.timers, t)
	return t.ch
}

func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker period")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{next: f.now.Add(d), period: d, ch: make(chan time.Time, 1)}
	f.timers = append(f.timers, t)
	return fakeTicker{f, t}
}

type fakeTicker struct {
	f *Fake
	t *fakeTimer
}

func (t fakeTicker) C() <-chan time.Time { return t.t.ch }
func (t fakeTicker) Stop() {
	t.f.mu.Lock()
	t.t.done = true
	t.f.mu.Unlock()
}

// Advance moves time forward by d, firing every timer that falls due, in
// order. A jump over several periods of a ticker delivers one tick (like a
// real ticker whose reader was late).
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	target := f.now.Add(d)
	for {
		sort.SliceStable(f.timers, func(i, j int) bool { return f.timers[i].next.Before(f.timers[j].next) })
		var due *fakeTimer
		for _, t := range f.timers {
			if !t.done && !t.next.After(target) {
				due = t
				break
			}
		}
		if due == nil {
			break
		}
		f.now = due.next
		select {
		case due.ch <- f.now:
		default:
		}
		if due.period == 0 {
			due.done = true
		} else {
			for !due.next.After(f.now) {
				due.next = due.next.Add(due.period)
			}
		}
	}
	f.now = target
	live := f.timers[:0]
	for _, t := range f.timers {
		if !t.done {
			live = append(live, t)
		}
	}
	f.timers = live
}
