package agentcfg

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/tandem-ha/tandem/internal/fsutil"
)

// Watch reports changes to one address.yaml: a write, a create, a delete or
// a rename onto or away from its name. It watches the directory (and, for a
// symbolic link, the directory of the link's target too) and filters by name,
// so it sees fsutil's replace-by-rename and survives the file being deleted
// and created again. Events are debounced: a burst of changes yields one
// report once debounce has passed without another change (but at least one
// report every 4×debounce during a continuous burst). Reports are coalesced:
// the channel has a buffer of one and a report is dropped only when one is
// already waiting. The caller should re-read the file on each report.
//
// When inotify is exhausted (a host running many agents can reach
// fs.inotify.max_user_instances or max_user_watches), Watch falls back to
// polling (see WatchOptions.Poll) every DefaultPollInterval (or debounce, if
// longer).
//
// Watch stops when ctx is done; the channel is then closed. The directory
// must exist when Watch is called. Watch is WatchWith with only a debounce.
func Watch(ctx context.Context, path string, debounce time.Duration) (<-chan struct{}, error) {
	return WatchWith(ctx, path, WatchOptions{Debounce: debounce})
}

// DefaultPollInterval is how often a polling Watch looks at the file.
const DefaultPollInterval = 500 * time.Millisecond

// WatchOptions tune WatchWith. The zero value is Watch's behaviour with no
// debounce.
type WatchOptions struct {
	// Debounce: see Watch.
	Debounce time.Duration
	// Poll watches by polling instead of inotify: for file systems where
	// inotify misses other hosts' changes (NFS, some FUSE mounts). Watch
	// also polls when inotify is exhausted. A poll compares the file's
	// identity, size, times and content (files up to DefaultMaxFileSize), so
	// a change within one timestamp tick is seen too.
	Poll bool
	// PollInterval is the polling period; 0 means DefaultPollInterval. The
	// period used is max(PollInterval, Debounce), which also debounces.
	PollInterval time.Duration
}

// WatchWith is Watch with options. Changes made after it returns are
// reported, also when it polls: the baseline is taken before it returns.
func WatchWith(ctx context.Context, path string, opt WatchOptions) (<-chan struct{}, error) {
	debounce := opt.Debounce
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Dir(abs)); err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if opt.Poll {
		return poll(ctx, abs, opt), nil
	}
	w, err := fsnotify.NewWatcher()
	if isExhausted(err) {
		return poll(ctx, abs, opt), nil
	}
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	names := map[string]bool{abs: true}
	watched := map[string]bool{}
	add := func(p string) error {
		names[p] = true
		dir := filepath.Dir(p)
		if watched[dir] {
			return nil
		}
		if err := w.Add(dir); err != nil {
			return err
		}
		watched[dir] = true
		return nil
	}
	if err := add(abs); err != nil {
		w.Close()
		if isExhausted(err) {
			return poll(ctx, abs, opt), nil
		}
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	// For a symlink also watch where it points; re-resolved on every event
	// for the link's own name, in case the link is repointed.
	follow := func() {
		if t, err := fsutil.ResolveLinks(abs); err == nil && t != abs {
			if t, err = filepath.Abs(t); err == nil {
				_ = add(t)
			}
		}
	}
	follow()

	// One goroutine filters the events, one debounces them (debounceLoop,
	// shared with WatchMux). The second stops when the first does.
	raw := make(chan struct{}, 1)
	stopped := make(chan struct{})
	poke := func() {
		select {
		case raw <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(stopped)
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Op == fsnotify.Chmod || !names[filepath.Clean(ev.Name)] {
					continue
				}
				if filepath.Clean(ev.Name) == abs {
					follow()
				}
				poke()
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				poke() // an overflow loses events: report, so the caller re-reads
			}
		}
	}()
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		debounceLoop(ctx, stopped, raw, out, debounce)
	}()
	return out, nil
}

func isExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOSPC)
}

// fileState is what a poll compares. Identity, size and times alone miss
// an in-place rewrite of the same size within one timestamp tick (file
// systems stamp times with a coarse clock, and a freed inode number is
// reused by the next rename-over), so the content's digest is part of it.
type fileState struct {
	exists bool
	ino    uint64
	dev    uint64
	size   int64
	mtime  time.Time
	sum    [sha256.Size]byte // of the content; zero when it could not be read safely
}

func statOf(path string) fileState {
	fi, err := os.Stat(path) // follows a symbolic link
	if err != nil {
		return fileState{}
	}
	s := fileState{exists: true, size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino, s.dev = uint64(st.Ino), uint64(st.Dev)
	}
	if fi.Mode().IsRegular() {
		if data, _, err := readAgentFile(path, DefaultMaxFileSize); err == nil {
			s.sum = sha256.Sum256(data)
		}
	}
	return s
}

// poll is Watch without inotify: it compares the file's state every
// max(PollInterval, Debounce), which also debounces. The baseline is taken
// before poll returns, so a change made right after Watch returns counts.
func poll(ctx context.Context, path string, opt WatchOptions) <-chan struct{} {
	out := make(chan struct{}, 1)
	every := opt.PollInterval
	if every <= 0 {
		every = DefaultPollInterval
	}
	every = max(every, opt.Debounce)
	last := statOf(path)
	go func() {
		defer close(out)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if cur := statOf(path); cur != last {
				last = cur
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}
