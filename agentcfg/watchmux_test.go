package agentcfg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// More files than the default inotify instance limit (128), one instance.
func TestWatchMuxScalesPastTheInotifyInstanceLimit(t *testing.T) {
	m, err := NewWatchMux()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := t.TempDir()
	const n = 300
	var paths []string
	var chans []<-chan struct{}
	for i := 0; i < n; i++ {
		dir := filepath.Join(root, fmt.Sprint(i))
		os.MkdirAll(dir, 0o755)
		p := filepath.Join(dir, "address.yaml")
		os.WriteFile(p, []byte("stomp_interface: a\n"), 0o644)
		ch, err := m.Watch(ctx, p, 10*time.Millisecond)
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		paths, chans = append(paths, p), append(chans, ch)
	}
	// Replace-by-rename (how tandem writes) of file 7 reaches its watcher only.
	if err := fsutil.WriteFile(paths[7], []byte("stomp_interface: b\n"), fsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-chans[7]:
	case <-time.After(5 * time.Second):
		t.Fatal("no report for the rewritten file")
	}
	select {
	case <-chans[8]:
		t.Fatal("a neighbour got a report")
	case <-time.After(100 * time.Millisecond):
	}
	// Delete and recreate.
	os.Remove(paths[9])
	os.WriteFile(paths[9], []byte("stomp_interface: c\n"), 0o644)
	select {
	case <-chans[9]:
	case <-time.After(5 * time.Second):
		t.Fatal("no report after delete and recreate")
	}
	// Cancelling closes the channels.
	cancel()
	for i, ch := range chans {
		select {
		case _, ok := <-ch:
			if ok {
				// a coalesced report may be pending; the close follows
				if _, ok := <-ch; ok {
					t.Fatalf("channel %d not closed", i)
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("channel %d not closed after cancel", i)
		}
	}
}

func TestWatchMuxClose(t *testing.T) {
	m, err := NewWatchMux()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "address.yaml")
	os.WriteFile(p, []byte("stomp_interface: a\n"), 0o644)
	ch, err := m.Watch(context.Background(), p, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	m.Close()
	if _, ok := <-ch; ok {
		if _, ok := <-ch; ok {
			t.Fatal("channel open after Close")
		}
	}
	if _, err := m.Watch(context.Background(), p, 0); err != ErrMuxClosed {
		t.Fatal(err)
	}
}

func TestWatchMuxDebouncesWithTimersAndCapsABurst(t *testing.T) {
	const d = 20 * time.Millisecond
	s := &muxSub{out: make(chan struct{}, 1), debounce: d}
	defer s.stop()
	// Three quick events: one report.
	for i := 0; i < 3; i++ {
		s.touch()
	}
	select {
	case <-s.out:
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
	s.mu.Lock()
	pending := s.pending
	s.mu.Unlock()
	if pending {
		t.Fatal("the report left the events pending")
	}
	// A continuous burst (an event every d/4 for 20 debounce periods) is
	// still reported during it, at least every 4×debounce.
	reports := 0
	end := time.Now().Add(20 * d)
	for time.Now().Before(end) {
		s.touch()
		select {
		case <-s.out:
			reports++
		case <-time.After(d / 4):
		}
	}
	if reports == 0 {
		t.Fatal("a continuous burst was never reported while it lasted")
	}
	if !s.stop() || s.stop() {
		t.Fatal("stop is not once")
	}
	s.touch() // after stop: nothing, no panic
	if _, ok := <-s.out; ok {
		if _, ok := <-s.out; ok {
			t.Fatal("out open after stop")
		}
	}
}
