package agentcfg

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// flusherWith returns a Flusher whose file system flush is f.
func flusherWith(parallel int, f func(*fsutil.FS) error) *Flusher {
	fl := NewFlusher(parallel)
	fl.syncs.flush = f
	return fl
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if fsutil.IsTemp(e.Name()) {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}

func TestFlusherServesManyRewritesWithFewSyncs(t *testing.T) {
	const n = 64
	dir := t.TempDir()
	var files []string
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, strconv.Itoa(i), "address.yaml")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, p, sample)
		files = append(files, p)
	}
	var syncs atomic.Int64
	fl := flusherWith(2, func(s *fsutil.FS) error { syncs.Add(1); return s.Sync() })
	defer fl.Close()
	var wg sync.WaitGroup
	res := make([]Result, n)
	for i, p := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = CompareAndSwapWith(p, testUpdate, BatchOptions{Flusher: fl})
		}()
	}
	wg.Wait()
	want, err := Edit([]byte(sample), testUpdate)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Outcome != Rewritten || r.Written == nil || r.After.FailoverEpoch != testUpdate.Epoch {
			t.Fatalf("%s: %v %v (written %v)", r.Path, r.Outcome, r.Err, r.Written != nil)
		}
		got, err := os.ReadFile(files[i])
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: %q %v", files[i], got, err)
		}
		noTemps(t, filepath.Dir(files[i]))
	}
	// Two syncs per rewrite would be 128: the group commit shares them.
	if s := syncs.Load(); s < 2 || s >= 2*n {
		t.Fatalf("%d syncs for %d rewrites", s, n)
	}
	// A rewrite that changes nothing syncs nothing.
	before := syncs.Load()
	if r := CompareAndSwapWith(files[0], testUpdate, BatchOptions{Flusher: fl}); r.Outcome != Unchanged {
		t.Fatalf("again: %v %v", r.Outcome, r.Err)
	}
	if s := syncs.Load(); s != before {
		t.Fatalf("an unchanged file cost %d syncs", s-before)
	}
}

var boom = errors.New("injected writeback error")

// failingSyncAt returns a sample file and a Flusher whose nth sync fails
// with boom (a rewrite's first sync comes before its rename, its second
// after).
func failingSyncAt(t *testing.T, n int64) (string, *Flusher) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, p, sample)
	var calls atomic.Int64
	fl := flusherWith(0, func(s *fsutil.FS) error {
		if calls.Add(1) == n {
			return boom
		}
		return s.Sync()
	})
	t.Cleanup(fl.Close)
	return p, fl
}

func TestFlusherSyncErrorBeforeTheRenameLeavesTheFileAndIsNotSticky(t *testing.T) {
	p, fl := failingSyncAt(t, 1)
	r := CompareAndSwapWith(p, testUpdate, BatchOptions{Flusher: fl})
	if r.Outcome != Failed || !errors.Is(r.Err, boom) || r.After.FailoverEpoch != 0 {
		t.Fatalf("%v %v %+v", r.Outcome, r.Err, r.After)
	}
	if got, _ := os.ReadFile(p); string(got) != sample {
		t.Fatalf("file changed by a failed rewrite: %q", got)
	}
	noTemps(t, filepath.Dir(p))
	// The error was for the rewrite under way: the next one succeeds.
	if r := CompareAndSwapWith(p, testUpdate, BatchOptions{Flusher: fl}); r.Outcome != Rewritten {
		t.Fatalf("after the error: %v %v", r.Outcome, r.Err)
	}
}

func TestFlusherSyncErrorAfterTheRenameSaysNotConfirmedDurable(t *testing.T) {
	p, fl := failingSyncAt(t, 2)
	r := CompareAndSwapWith(p, testUpdate, BatchOptions{Flusher: fl})
	if r.Outcome != Failed || !errors.Is(r.Err, boom) || !strings.Contains(r.Err.Error(), "not confirmed durable") {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	if a, err := ReadFile(p); err != nil || a.FailoverEpoch != testUpdate.Epoch {
		t.Fatalf("the rename happened: %+v %v", a, err)
	}
}

func TestFlusherWritesFailoverServers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, p, sample)
	fl := NewFlusher(1)
	defer fl.Close()
	r := SetFailoverServersWith(p, []string{"10.0.0.3:61620"}, BatchOptions{Flusher: fl})
	if r.Outcome != Rewritten {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	if a, err := ReadFile(p); err != nil || len(a.FailoverServers) != 1 || a.FailoverServers[0] != "10.0.0.3:61620" {
		t.Fatalf("%+v %v", a, err)
	}
}

func TestGroupSyncErrorFailsEveryWriterMarkedBeforeIt(t *testing.T) {
	var calls atomic.Int64
	gs := &groupSync{flush: func(*fsutil.FS) error {
		if calls.Add(1) == 1 {
			return boom
		}
		return nil
	}}
	gs.cond = sync.NewCond(&gs.mu)
	early := gs.mark() // a writer that wrote before the failing sync
	if err := gs.wait(gs.mark()); !errors.Is(err, boom) {
		t.Fatalf("the failing sync: %v", err)
	}
	late := gs.mark()
	if err := gs.wait(late); err != nil {
		t.Fatalf("a writer marked after the error: %v", err)
	}
	// Linux reports the error once: the writer marked before it must not
	// take the later, successful sync as covering its data.
	if err := gs.wait(early); !errors.Is(err, boom) {
		t.Fatalf("a writer marked before the error: %v", err)
	}
	// A batch marks 0 for everything: the error stays for its rest.
	if err := gs.wait(0); !errors.Is(err, boom) {
		t.Fatalf("batch: %v", err)
	}
}

func TestFlusherReusesTheParseOfWhatItWroteAndNeverAStaleOne(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, p, sample)
	fl := NewFlusher(1)
	defer fl.Close()
	opt := BatchOptions{Flusher: fl}
	if r := CompareAndSwapWith(p, testUpdate, opt); r.Outcome != Rewritten {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	got, _ := os.ReadFile(p)
	fl.mu.Lock()
	kept := fl.docs[p]
	fl.mu.Unlock()
	if kept == nil || string(kept.data) != string(got) {
		t.Fatal("the parse of the written content is not kept")
	}
	// The next rewrite of those bytes reuses it and is right.
	u := testUpdate
	u.Epoch = 8
	if r := CompareAndSwapWith(p, u, opt); r.Outcome != Rewritten || r.Before.FailoverEpoch != 7 || r.After.FailoverEpoch != 8 {
		t.Fatalf("%v %v %+v", r.Outcome, r.Err, r.Before)
	}
	// A hand edit (other bytes) is parsed afresh: epoch 50 is above the
	// update's 9, which must not be taken from the kept parse (8).
	hand := strings.Replace(sample, "local_interface: 10.9.9.9\n", "local_interface: 10.9.9.9\nfailover_epoch: 50\n", 1)
	writeFile(t, p, hand)
	u.Epoch = 9
	if r := CompareAndSwapWith(p, u, opt); r.Outcome != Unchanged || r.Before.FailoverEpoch != 50 {
		t.Fatalf("after a hand edit: %v %v %+v", r.Outcome, r.Err, r.Before)
	}
	if got, _ := os.ReadFile(p); string(got) != hand {
		t.Fatalf("file changed: %q", got)
	}
	// Big files are not kept.
	big := sample + "# " + strings.Repeat("x", maxCachedFile) + "\n"
	q := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, q, big)
	if r := CompareAndSwapWith(q, testUpdate, opt); r.Outcome != Rewritten {
		t.Fatalf("big: %v %v", r.Outcome, r.Err)
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.docs[q] != nil {
		t.Fatal("a big file's parse is kept")
	}
}

func TestFlusherKeepsNoBigParseAndABigFileDoesNotHoldItsSlot(t *testing.T) {
	fl := NewFlusher(1)
	defer fl.Close()
	opt := BatchOptions{Flusher: fl}
	// Small in bytes, many nodes: not kept.
	many := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, many, sample+"x: ["+strings.Repeat("a,", 300)+"a]\n")
	if r := CompareAndSwapWith(many, testUpdate, opt); r.Outcome != Rewritten {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	// Over bigFile: parsed one at a time, with its slot given back
	// meanwhile; with one slot, a big file and a small one both finish.
	big := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, big, sample+"# "+strings.Repeat("y", bigFile)+"\n")
	small := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, small, sample)
	var wg sync.WaitGroup
	res := make([]Result, 2)
	for i, p := range []string{big, small} {
		wg.Add(1)
		go func() { defer wg.Done(); res[i] = CompareAndSwapWith(p, testUpdate, opt) }()
	}
	wg.Wait()
	for _, r := range res {
		if r.Outcome != Rewritten {
			t.Fatalf("%s: %v %v", r.Path, r.Outcome, r.Err)
		}
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.docs[many] != nil || fl.docs[big] != nil || fl.docs[small] == nil {
		t.Fatalf("kept: many %v, big %v, small %v", fl.docs[many] != nil, fl.docs[big] != nil, fl.docs[small] != nil)
	}
}

// A file that cannot be parsed is Invalid through a Flusher as without
// one: left byte-identical, nothing kept, no sync spent.
func TestFlusherLeavesAnInvalidFileAlone(t *testing.T) {
	var syncs atomic.Int64
	fl := flusherWith(1, func(s *fsutil.FS) error { syncs.Add(1); return s.Sync() })
	defer fl.Close()
	p := filepath.Join(t.TempDir(), "address.yaml")
	bad := "stomp_interface: [unclosed\n"
	writeFile(t, p, bad)
	r := CompareAndSwapWith(p, testUpdate, BatchOptions{Flusher: fl})
	if r.Outcome != Invalid || r.Err == nil {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	if got, _ := os.ReadFile(p); string(got) != bad {
		t.Fatalf("file changed: %q", got)
	}
	noTemps(t, filepath.Dir(p))
	fl.mu.Lock()
	kept := fl.docs[p]
	fl.mu.Unlock()
	if kept != nil || syncs.Load() != 0 {
		t.Fatalf("kept %v, %d syncs", kept != nil, syncs.Load())
	}
	// The slot went back: another rewrite through the one-slot Flusher runs.
	q := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, q, sample)
	if r := CompareAndSwapWith(q, testUpdate, BatchOptions{Flusher: fl}); r.Outcome != Rewritten {
		t.Fatalf("next: %v %v", r.Outcome, r.Err)
	}
}
