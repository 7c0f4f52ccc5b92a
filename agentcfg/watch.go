package agentcfg

import (
	"context"
	"fmt"
	"path/filepath"
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
// Watch stops when ctx is done; the channel is then closed. The directory
// must exist when Watch is called.
func Watch(ctx context.Context, path string, debounce time.Duration) (<-chan struct{}, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
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

	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		defer w.Close()
		var (
			timer    *time.Timer
			fire     <-chan time.Time
			burstAt  time.Time
			maxDelay = 4 * debounce
		)
		notify := func() {
			select {
			case out <- struct{}{}:
			default:
			}
		}
		for {
			select {
			case <-ctx.Done():
				if timer != nil {
					timer.Stop()
				}
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
				if debounce <= 0 {
					notify()
					continue
				}
				now := time.Now()
				if fire == nil {
					burstAt = now
				}
				d := debounce
				if left := burstAt.Add(maxDelay).Sub(now); left < d {
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
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				// An overflow loses events: report, so the caller re-reads.
				notify()
			}
		}
	}()
	return out, nil
}
