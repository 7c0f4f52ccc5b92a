package agentcfg

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

const eventWait = 5 * time.Second

// waitEvent waits up to eventWait for a report.
func waitEvent(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
	case <-time.After(eventWait):
		t.Fatalf("%s: no report within %v", what, eventWait)
	}
}

// drain empties the channel once the debounce of earlier changes has passed,
// so the next waitEvent sees the next change only. Draining too early would
// just leave a stale report, which makes no test pass wrongly: every test
// step changes the file after draining.
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func TestWatch(t *testing.T) { testWatch(t, WatchOptions{Debounce: 20 * time.Millisecond}) }

// TestWatchPolling runs the same steps with the fallback used when inotify
// is exhausted.
func TestWatchPolling(t *testing.T) {
	testWatch(t, WatchOptions{Debounce: 20 * time.Millisecond, Poll: true, PollInterval: 10 * time.Millisecond})
}

// A change made right after WatchWith returns is reported. The polling
// watch used to take its baseline in its goroutine, after returning, and
// then missed such a change most of the time (48 of 50 here).
func TestWatchPollingSeesAChangeRightAfterReturn(t *testing.T) {
	for _, opt := range []WatchOptions{{}, {Poll: true, PollInterval: 5 * time.Millisecond}} {
		for i := 0; i < 20; i++ {
			p := filepath.Join(t.TempDir(), "address.yaml")
			writeFile(t, p, sample)
			ctx, cancel := context.WithCancel(context.Background())
			ch, err := WatchWith(ctx, p, opt)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(sample+"# changed\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			waitEvent(t, ch, "change right after Watch returned")
			cancel()
		}
	}
}

// A same-size in-place rewrite that keeps the modification time (as one
// within a single timestamp tick does) is still seen by a poll.
func TestWatchPollingSeesASameSizeSameMtimeChange(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, p, "stomp_interface: 10.0.0.1\n")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := WatchWith(ctx, p, WatchOptions{Poll: true, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("2"), int64(len("stomp_interface: 10.0.0.")))
	f.Close()
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(p); after.Size() != fi.Size() || !after.ModTime().Equal(fi.ModTime()) {
		t.Fatal("setup: size or mtime differs")
	}
	waitEvent(t, ch, "same size, same mtime")
}

func testWatch(t *testing.T, opt WatchOptions) {
	dir := t.TempDir()
	p := filepath.Join(dir, "address.yaml")
	writeFile(t, p, sample)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := WatchWith(ctx, p, opt)
	if err != nil {
		t.Fatal(err)
	}

	// Replace by rename, as fsutil and every tandem writer does.
	if r := CompareAndSwap(p, testUpdate, false); r.Outcome != Rewritten {
		t.Fatal(r.Err)
	}
	waitEvent(t, ch, "rename-over")
	drain(ch)

	// In-place write.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("# appended\n")
	f.Close()
	waitEvent(t, ch, "write")
	drain(ch)

	// Delete, then recreate.
	os.Remove(p)
	waitEvent(t, ch, "delete")
	drain(ch)
	writeFile(t, p, sample)
	waitEvent(t, ch, "recreate")
	drain(ch)
	if err := fsutil.WriteFile(p, []byte(sample+"# again\n"), fsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ch, "rewrite after recreate")
	drain(ch)

	// A burst is debounced into few reports, at least one.
	for i := 0; i < 20; i++ {
		fsutil.WriteFile(p, []byte(sample), fsutil.Options{NoSync: true})
	}
	waitEvent(t, ch, "burst")
	drain(ch)

	// Other files in the directory (including our own lock and temp files)
	// are not reported.
	writeFile(t, filepath.Join(dir, "other.yaml"), "x: 1\n")
	writeFile(t, filepath.Join(dir, ".address.yaml.tmp-1"), "x")
	select {
	case <-ch:
		t.Fatal("reported a change to another file")
	case <-time.After(200 * time.Millisecond):
	}

	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			// a last report may have been waiting; then it must close
			if _, ok := <-ch; ok {
				t.Fatal("channel not closed after cancel")
			}
		}
	case <-time.After(eventWait):
		t.Fatal("channel not closed after cancel")
	}
}

func TestWatchSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "conf", "real", "address.yaml")
	writeFile(t, real, sample)
	link := filepath.Join(dir, "conf", "address.yaml")
	if err := os.Symlink("real/address.yaml", link); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := Watch(ctx, link, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r := CompareAndSwap(link, testUpdate, false); r.Outcome != Rewritten {
		t.Fatal(r.Err)
	}
	waitEvent(t, ch, "target rewritten through the link")
}

func TestWatchMissingDir(t *testing.T) {
	if _, err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "address.yaml"), 0); err == nil {
		t.Fatal("want an error for a missing directory")
	}
}
