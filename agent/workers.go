package agent

import "sync"

// Workers runs the file work of a fleet's agents (rebinds and
// failover_servers writes, one agent's at a time) on at most a fixed number
// of goroutines, taking the agents in the order they asked.
//
// Without it each agent starts its own file worker when a rebind arrives:
// a broadcast rebind to 10,000 agents made 10,000 goroutines runnable at
// once, and every other goroutine of the process (the links' readers, the
// pool's fan-out delivering the new primary's pings) waited behind them in
// the scheduler's run queue, for hundreds of milliseconds. A worker also
// keeps its grown stack from one agent to the next.
//
// The bound is a fleet's; it should be at least what the fleet's Flusher
// lets write at once (agentcfg.MaxRewritesUnderWay), so that one group
// commit still serves as many rewrites as before, and so that a few agents
// whose files' locks are held for a while (a rewrite waits up to its lock
// timeout) do not hold up the others. A nil *Workers starts one goroutine
// per call, as a lone agent does.
type Workers struct {
	mu      sync.Mutex
	max     int
	running int
	waiting []func()
	head    int // waiting[head:] are still to run
}

// NewWorkers returns Workers running at most n goroutines (at least 1).
func NewWorkers(n int) *Workers {
	return &Workers{max: max(n, 1)}
}

// Go runs f on a worker: at once if one is free, else after the functions
// already waiting. It never blocks.
func (w *Workers) Go(f func()) {
	if w == nil {
		go f()
		return
	}
	w.mu.Lock()
	if w.running < w.max {
		w.running++
		w.mu.Unlock()
		go w.run(f)
		return
	}
	w.waiting = append(w.waiting, f)
	w.mu.Unlock()
}

// run runs f, then every waiting function it can take, then exits.
func (w *Workers) run(f func()) {
	for f != nil {
		f()
		w.mu.Lock()
		if w.head < len(w.waiting) {
			f = w.waiting[w.head]
			w.waiting[w.head] = nil
			w.head++
			if w.head == len(w.waiting) {
				w.waiting, w.head = w.waiting[:0], 0
			}
		} else {
			f = nil
			w.running--
		}
		w.mu.Unlock()
	}
}

// Waiting returns how many functions wait for a worker.
func (w *Workers) Waiting() int {
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting) - w.head
}
