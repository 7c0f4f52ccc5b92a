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
//
// A Fake made by NewHandoverFake hands its ticks over instead: see there.
type Fake struct {
	mu       sync.Mutex
	now      time.Time
	timers   []*fakeTimer
	handover bool
	stepping sync.Mutex // one hand-over Advance at a time, in order
}

type fakeTimer struct {
	next    time.Time
	period  time.Duration // 0: one-shot
	ch      chan time.Time
	done    bool
	stopped chan struct{} // closed by Stop (hand-over tickers)
}

// NewFake starts a fake clock at start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// HandoverGuard bounds how long a hand-over Advance waits for one reader
// that neither takes its tick nor stops its ticker (a bug in the test or
// the code under test): the tick is then given up and not counted.
const HandoverGuard = 10 * time.Second

// NewHandoverFake starts at start a fake clock whose tickers hand their
// ticks over: their channels are unbuffered, and Advance (or Step) returns
// only when every tick that fell due was taken by its reader, or its ticker
// was stopped. Readers see Now() at the new time while they handle a tick.
//
// That makes absence testable. A loop takes its next tick only once it has
// finished with everything it took before, and a loop that ended stopped its
// ticker; so when Step reports that a loop took a tick, every input that loop
// consumed earlier has been handled and did not end it.
//
// A jump over several periods of a ticker delivers one tick (a late reader).
// After's channel keeps its buffer of one (one-shot timers are often
// abandoned by their reader); a value put in it counts as taken.
func NewHandoverFake(start time.Time) *Fake { return &Fake{now: start, handover: true} }

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
	if f.handover {
		t.ch = make(chan time.Time)
		t.stopped = make(chan struct{})
	}
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
	defer t.f.mu.Unlock()
	if t.t.stopped != nil && !t.t.done {
		close(t.t.stopped)
	}
	t.t.done = true
}

// Advance moves time forward by d, firing every timer that falls due, in
// order. A jump over several periods of a ticker delivers one tick (like a
// real ticker whose reader was late).
func (f *Fake) Advance(d time.Duration) { f.Step(d) }

// Step is Advance that says how many ticks and timer values were delivered:
// put in a free buffer (NewFake), or taken by their readers
// (NewHandoverFake). Ticks dropped on a full buffer, and hand-overs to a
// ticker that was stopped, are not counted.
func (f *Fake) Step(d time.Duration) int {
	if f.handover {
		return f.stepHandover(d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
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
			n++
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
	f.prune()
	return n
}

func (f *Fake) prune() {
	live := f.timers[:0]
	for _, t := range f.timers {
		if !t.done {
			live = append(live, t)
		}
	}
	f.timers = live
}

// stepHandover moves to the target at once, then hands each value that fell
// due to its reader, in the order they fell due, outside the lock (readers
// call Now while they handle a tick).
func (f *Fake) stepHandover(d time.Duration) int {
	f.stepping.Lock()
	defer f.stepping.Unlock()
	type delivery struct {
		t  *fakeTimer
		at time.Time
	}
	f.mu.Lock()
	target := f.now.Add(d)
	f.now = target
	sort.SliceStable(f.timers, func(i, j int) bool { return f.timers[i].next.Before(f.timers[j].next) })
	var due []delivery
	for _, t := range f.timers {
		if t.done || t.next.After(target) {
			continue
		}
		due = append(due, delivery{t, t.next})
		if t.period == 0 {
			t.done = true
			continue
		}
		for !t.next.After(target) {
			t.next = t.next.Add(t.period)
		}
	}
	f.prune()
	f.mu.Unlock()

	n := 0
	for _, v := range due {
		if v.t.stopped == nil { // After: buffered
			select {
			case v.t.ch <- v.at:
				n++
			default:
			}
			continue
		}
		guard := time.NewTimer(HandoverGuard)
		select {
		case v.t.ch <- v.at:
			n++
		case <-v.t.stopped:
		case <-guard.C:
		}
		guard.Stop()
	}
	return n
}
