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

type muxSub struct {
	raw chan struct{} // an event for this file happened (buffer 1)
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
	m.mu.Unlock()
	err := m.w.Close()
	m.wg.Wait()
	return err
}

func (m *WatchMux) loop() {
	defer m.wg.Done()
	signal := func(set map[*muxSub]bool) {
		for s := range set {
			select {
			case s.raw <- struct{}{}:
			default:
			}
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
	s := &muxSub{raw: make(chan struct{}, 1)}
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

	out := make(chan struct{}, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(out)
		defer func() {
			m.mu.Lock()
			for _, p := range paths {
				m.remove(p, s)
			}
			m.mu.Unlock()
		}()
		debounceLoop(ctx, m.done, s.raw, out, debounce)
	}()
	return out, nil
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
			d := debounce
			if left := burstAt.Add(4 * debounce).Sub(now); left < d {
				d = max(left, 0)
			}
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
