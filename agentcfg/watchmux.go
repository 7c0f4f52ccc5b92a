package agentcfg

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// WatchMux watches many address.yaml files with one inotify instance (the
// kernel allows 128 per user by default, so one Watch per agent does not
// scale to a fleet). Each Watch behaves like the package-level Watch:
// directory-based, rename- and recreate-proof, debounced, coalesced.
type WatchMux struct {
	w *fsnotify.Watcher

	mu     sync.Mutex
	dirs   map[string]int              // watched directory -> subscribers
	subs   map[string]map[*muxSub]bool // file path -> subscribers
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// muxSub is one Watch: the mux's loop touches it for each event, and a
// timer (not a goroutine per watch: a fleet has thousands) reports the
// debounced change on out.
type muxSub struct {
	out      chan struct{} // buffer 1
	debounce time.Duration

	mu      sync.Mutex
	timer   *time.Timer
	pending bool      // an event not yet reported
	burstAt time.Time // the first event of the pending burst
	closed  bool
}

func (s *muxSub) notifyLocked() {
	select {
	case s.out <- struct{}{}:
	default:
	}
}

// touch records an event: reported once debounce passed without another
// one, and at least every 4×debounce during a continuous burst (as
// debounceLoop).
func (s *muxSub) touch() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.debounce <= 0 {
		s.notifyLocked()
		return
	}
	now := time.Now()
	if !s.pending {
		s.pending, s.burstAt = true, now
	}
	d := debounceDelay(s.burstAt, now, s.debounce)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.fire)
	} else {
		s.timer.Reset(d)
	}
}

// fire reports the pending events. A fire that raced a touch's Reset may
// report a little early; the events before it are covered by the report
// (the reader reads the file after it), the later ones by the next fire.
func (s *muxSub) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.pending {
		return
	}
	s.pending = false
	s.notifyLocked()
}

// stop closes out; safe twice. It reports whether it closed it.
func (s *muxSub) stop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	close(s.out)
	return true
}

// NewWatchMux starts a multiplexer; Close stops it.
func NewWatchMux() (*WatchMux, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	m := &WatchMux{w: w, dirs: map[string]int{}, subs: map[string]map[*muxSub]bool{}, done: make(chan struct{})}
	m.wg.Add(1)
	go m.loop()
	return m, nil
}

// Close stops every watch (their channels close) and waits. Safe twice.
func (m *WatchMux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	var all []*muxSub
	for _, set := range m.subs {
		for s := range set {
			all = append(all, s)
		}
	}
	m.mu.Unlock()
	err := m.w.Close()
	m.wg.Wait()
	for _, s := range all {
		s.stop()
	}
	return err
}

func (m *WatchMux) loop() {
	defer m.wg.Done()
	signal := func(set map[*muxSub]bool) {
		for s := range set {
			s.touch()
		}
	}
	poke := func(name string, all bool) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !all {
			signal(m.subs[name]) // one lookup: a fleet's rewrite makes thousands of events
			return
		}
		for _, set := range m.subs {
			signal(set)
		}
	}
	for {
		select {
		case ev, ok := <-m.w.Events:
			if !ok {
				return
			}
			if ev.Op != fsnotify.Chmod {
				poke(filepath.Clean(ev.Name), false)
			}
		case _, ok := <-m.w.Errors:
			if !ok {
				return
			}
			poke("", true) // an overflow loses events: everyone re-reads
		case <-m.done:
			return
		}
	}
}

func (m *WatchMux) add(path string, s *muxSub) error {
	dir := filepath.Dir(path)
	if m.dirs[dir] == 0 {
		if err := m.w.Add(dir); err != nil {
			return err
		}
	}
	m.dirs[dir]++
	if m.subs[path] == nil {
		m.subs[path] = map[*muxSub]bool{}
	}
	m.subs[path][s] = true
	return nil
}

func (m *WatchMux) remove(path string, s *muxSub) {
	delete(m.subs[path], s)
	if len(m.subs[path]) == 0 {
		delete(m.subs, path)
	}
	dir := filepath.Dir(path)
	if m.dirs[dir]--; m.dirs[dir] <= 0 {
		delete(m.dirs, dir)
		if !m.closed {
			_ = m.w.Remove(dir)
		}
	}
}

// Watch reports changes to path until ctx ends (then the channel closes),
// with the same semantics as the package-level Watch.
func (m *WatchMux) Watch(ctx context.Context, path string, debounce time.Duration) (<-chan struct{}, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	paths := []string{abs}
	if t, err := fsutil.ResolveLinks(abs); err == nil && t != abs {
		if t, err = filepath.Abs(t); err == nil {
			paths = append(paths, t)
		}
	}
	s := &muxSub{out: make(chan struct{}, 1), debounce: debounce}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrMuxClosed
	}
	for i, p := range paths {
		if err := m.add(p, s); err != nil {
			for _, q := range paths[:i] {
				m.remove(q, s)
			}
			m.mu.Unlock()
			return nil, fmt.Errorf("watch %s: %w", path, err)
		}
	}
	m.mu.Unlock()

	// No goroutine waits for ctx: context.AfterFunc runs the stop when it
	// ends.
	context.AfterFunc(ctx, func() {
		if !s.stop() {
			return // the mux closed first
		}
		m.mu.Lock()
		for _, p := range paths {
			m.remove(p, s)
		}
		m.mu.Unlock()
	})
	return s.out, nil
}

// debounceDelay is how long after now a burst that began at burstAt is
// reported: debounce after its last event, and no later than 4×debounce
// after its first.
func debounceDelay(burstAt, now time.Time, debounce time.Duration) time.Duration {
	if left := burstAt.Add(4 * debounce).Sub(now); left < debounce {
		return max(left, 0)
	}
	return debounce
}

// debounceLoop turns raw change signals into debounced reports on out: one
// report once debounce passed without another change, at least one every
// 4×debounce during a continuous burst.
func debounceLoop(ctx context.Context, stop <-chan struct{}, raw <-chan struct{}, out chan struct{}, debounce time.Duration) {
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	var timer *time.Timer
	var fire <-chan time.Time
	var burstAt time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-raw:
			if debounce <= 0 {
				notify()
				continue
			}
			now := time.Now()
			if fire == nil {
				burstAt = now
			}
			d := debounceDelay(burstAt, now, debounce)
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Stop()
				select {
				case <-timer.C:
				default:
				}
				timer.Reset(d)
			}
			fire = timer.C
		case <-fire:
			fire = nil
			notify()
		}
	}
}
