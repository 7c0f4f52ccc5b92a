package agentcfg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

const sample = "# agent\nstomp_interface: 10.0.0.1 # primary\nuse_ssl: 0\nlocal_interface: 10.9.9.9\n"

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func withEpoch(e uint64) Update { u := testUpdate; u.Epoch = e; return u }

func TestCompareAndSwap(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		epoch   uint64
		force   bool
		outcome Outcome
	}{
		{"no epoch", sample, 1, false, Rewritten},
		{"lower epoch", sample + "failover_epoch: 3\n", 4, false, Rewritten},
		{"equal epoch, same id", sample + "failover_id: " + testID + "\nfailover_epoch: 4\n", 4, false, Unchanged},
		// An equal epoch is broken by the failover id (the greater wins).
		{"equal epoch, greater id in the file", sample + "failover_id: " + testID2 + "\nfailover_epoch: 4\n", 4, false, Unchanged},
		{"equal epoch, lower id in the file", sample + "failover_id: 00000000-0000-4000-8000-000000000000\nfailover_epoch: 4\n", 4, false, Rewritten},
		{"higher epoch", sample + "failover_epoch: 9\n", 4, false, Unchanged},
		{"force lowers", sample + "failover_epoch: 9\n", 4, true, Rewritten},
		{"epoch 0 update on no epoch", sample, 0, false, Unchanged},
		{"force identical", "stomp_interface: 10.0.0.2\nstomp_port: 61620\nfailover_id: " + testID + "\nfailover_epoch: 4\n", 4, true, Unchanged},
		{"invalid port", sample + "stomp_port: x\n", 4, false, Invalid},
		{"invalid epoch", sample + "failover_epoch: -1\n", 4, true, Invalid},
		{"not yaml", "a: [\n", 4, false, Invalid},
		{"uneditable", "stomp_interface: &a h\nx: *a\n", 4, false, Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "address.yaml")
			writeFile(t, p, tt.in)
			r := CompareAndSwap(p, withEpoch(tt.epoch), tt.force)
			if r.Outcome != tt.outcome {
				t.Fatalf("outcome %v (%v), want %v", r.Outcome, r.Err, tt.outcome)
			}
			got := readFile(t, p)
			if tt.outcome != Rewritten {
				if got != tt.in {
					t.Fatalf("file changed: %q", got)
				}
				if (r.Err != nil) != (tt.outcome == Invalid) {
					t.Fatalf("err = %v", r.Err)
				}
				if r.Err != nil && !strings.HasPrefix(r.Err.Error(), p+": ") {
					t.Fatalf("error %q does not name the file", r.Err)
				}
				return
			}
			a, err := Parse([]byte(got))
			if err != nil {
				t.Fatal(err)
			}
			if !a.Equal(r.After) || a.FailoverEpoch != tt.epoch || a.FailoverID != testID || a.StompInterface != "10.0.0.2" {
				t.Fatalf("after = %+v, result %+v", a, r.After)
			}
			if !strings.Contains(got, "# primary") || !strings.Contains(got, "local_interface: 10.9.9.9") {
				t.Fatalf("lost bytes: %q", got)
			}
		})
	}
}

func TestCompareAndSwapMissingAndBadUpdate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	if r := CompareAndSwap(p, testUpdate, false); r.Outcome != Failed || !errors.Is(r.Err, fs.ErrNotExist) {
		t.Fatalf("missing file: %+v", r)
	}
	if _, err := os.Stat(LockPath(p)); err == nil {
		t.Fatal("lock file created for a missing file")
	}
	writeFile(t, p, sample)
	if r := CompareAndSwap(p, Update{}, false); r.Outcome != Failed || !errors.Is(r.Err, ErrBadUpdate) {
		t.Fatalf("bad update: %+v", r)
	}
	if readFile(t, p) != sample {
		t.Fatal("file changed")
	}
}

// A symbolic link that stays beneath the file's directory is followed: the
// link is kept, its target replaced with its mode, the lock beside the
// target. (Links that leave the directory: hostile_test.go.)
func TestCompareAndSwapKeepsModeAndSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "agent", "conf", "versions", "address.yaml")
	writeFile(t, real, sample)
	if err := os.Chmod(real, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "agent", "conf", "address.yaml")
	if err := os.Symlink("versions/../versions/./address.yaml", link); err != nil {
		t.Fatal(err)
	}
	if r := CompareAndSwap(link, testUpdate, false); r.Outcome != Rewritten {
		t.Fatalf("%+v", r)
	}
	fi, err := os.Lstat(link)
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", fi.Mode(), err)
	}
	st, _ := os.Stat(real)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if a, err := ReadFile(link); err != nil || a.FailoverEpoch != 7 {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := os.Stat(LockPath(real)); err != nil {
		t.Fatalf("lock file not beside the target: %v", err)
	}
}

func TestRewriteAll(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	want := map[string]Outcome{}
	add := func(name, content string, o Outcome) string {
		p := filepath.Join(dir, name, "conf", "address.yaml")
		if content != "" {
			writeFile(t, p, content)
		}
		paths = append(paths, p)
		want[p] = o
		return p
	}
	for i := 0; i < 300; i++ {
		switch i % 10 {
		case 3:
			add(fmt.Sprint(i), sample+"stomp_port: nope\n", Invalid)
		case 5:
			add(fmt.Sprint(i), sample+"failover_epoch: 100\n", Unchanged)
		case 7:
			add(fmt.Sprint(i), "", Failed) // missing
		default:
			add(fmt.Sprint(i), sample, Rewritten)
		}
	}
	// The same file twice (and via a symlink beneath the link's directory):
	// the first rewrites, the second finds the epoch already there. Must not
	// deadlock on its own lock.
	dup := paths[0]
	paths = append(paths, dup)
	link := filepath.Join(dir, "link.yaml")
	os.Symlink(filepath.Join("1", "conf", "address.yaml"), link)
	paths = append(paths, link)

	before := map[string]string{}
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			before[p] = string(b)
		}
	}
	var mu sync.Mutex
	last := -1
	res := RewriteAll(paths, testUpdate, BatchOptions{Workers: 3, Progress: func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if done < last || total != len(paths) {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	}})
	if last != len(paths) {
		t.Fatalf("last progress %d", last)
	}
	if len(res) != len(paths) {
		t.Fatal("result count")
	}
	// A duplicate and its original are one Rewritten and one Unchanged, in
	// either order: the worker holding the duplicate may reach it first.
	for k, orig := range []int{0, 1} {
		a, b := &res[orig], &res[len(res)-2+k]
		if a.Outcome == Unchanged && b.Outcome == Rewritten {
			a.Outcome, b.Outcome = Rewritten, Unchanged
			a.After = b.After
		}
		if b.Outcome != Unchanged {
			t.Fatalf("duplicate %s: %v %v", b.Path, b.Outcome, b.Err)
		}
	}
	for i, r := range res[:len(res)-2] {
		if r.Path != paths[i] || r.Outcome != want[paths[i]] {
			t.Fatalf("%d %s: %v (%v), want %v", i, r.Path, r.Outcome, r.Err, want[paths[i]])
		}
		if r.Outcome != Rewritten {
			if b, err := os.ReadFile(r.Path); err == nil && string(b) != before[r.Path] {
				t.Fatalf("%s changed", r.Path)
			}
			continue
		}
		if a, err := ReadFile(r.Path); err != nil || !a.Equal(r.After) || a.FailoverEpoch != 7 {
			t.Fatalf("%s: %+v %v", r.Path, a, err)
		}
	}
	// No temporary files left behind.
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if fsutil.IsTemp(p) {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
	// A second run changes nothing.
	for _, r := range RewriteAll(paths, testUpdate, BatchOptions{}) {
		if r.Outcome == Rewritten {
			t.Fatalf("second run rewrote %s", r.Path)
		}
	}
	if r := RewriteAll(paths[:2], Update{}, BatchOptions{}); r[0].Outcome != Failed || !errors.Is(r[1].Err, ErrBadUpdate) {
		t.Fatalf("bad update: %+v", r)
	}
	if r := RewriteAll(nil, testUpdate, BatchOptions{}); len(r) != 0 {
		t.Fatal("nil paths")
	}
}

func TestExpand(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"b", "a", "c"} {
		writeFile(t, filepath.Join(dir, n, "conf", "address.yaml"), sample)
	}
	writeFile(t, filepath.Join(dir, "a", "conf", ".address.yaml.tmp-123"), "x")
	writeFile(t, filepath.Join(dir, "a", "conf", ".address.yaml.lock"), "")
	os.MkdirAll(filepath.Join(dir, "d", "conf", "address.yaml"), 0o755) // a directory: listed, reported by readers
	got, err := Expand([]string{
		filepath.Join(dir, "*", "conf", "address.yaml"),
		filepath.Join(dir, "a", "conf", "*"),
		filepath.Join(dir, "b", "conf", "..", "conf", "address.yaml"),
		filepath.Join(dir, "nomatch", "*"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range []string{"a", "b", "c", "d"} {
		want = append(want, filepath.Join(dir, n, "conf", "address.yaml"))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Expand = %v, want %v", got, want)
	}
	_, err = Expand([]string{"/ok/*", "/bad/[x"})
	if !errors.Is(err, ErrBadPattern) || !strings.Contains(err.Error(), `"/bad/[x"`) {
		t.Fatalf("bad pattern: %v", err)
	}
}

func TestOutcomeString(t *testing.T) {
	for o, s := range map[Outcome]string{Rewritten: "rewritten", Unchanged: "unchanged", Invalid: "invalid", Failed: "error", 9: "Outcome(9)"} {
		if o.String() != s {
			t.Errorf("%d: %q", int(o), o.String())
		}
	}
}

// TestRewriteAllSyncFailure: a result is Rewritten only after a successful
// sync. A failed flush before the renames leaves the files untouched; a
// failed closing flush leaves new content that is reported Failed.
func TestRewriteAllSyncFailure(t *testing.T) {
	files := makeAgents(t, 5, sample)
	boom := errors.New("EIO")

	for _, r := range RewriteAll(files, testUpdate, BatchOptions{flush: func(*fsutil.FS) error { return boom }}) {
		if r.Outcome != Failed || !errors.Is(r.Err, boom) {
			t.Fatalf("%+v", r)
		}
		if readFile(t, r.Path) != sample {
			t.Fatal("file renamed although its data was not flushed")
		}
	}

	calls := 0
	var mu sync.Mutex
	secondFails := func(f *fsutil.FS) error {
		mu.Lock()
		defer mu.Unlock()
		if calls++; calls > 1 { // the group flush passes, the closing one fails
			return boom
		}
		return f.Sync()
	}
	for _, r := range RewriteAll(files, testUpdate, BatchOptions{Workers: 1, flush: secondFails}) {
		if r.Outcome != Failed || !errors.Is(r.Err, boom) || !strings.Contains(r.Err.Error(), "not confirmed durable") {
			t.Fatalf("%+v", r)
		}
	}
}

// GroupSize 1 makes every file its own group (one flush each); the batch
// result is the same.
func TestRewriteAllGroupSize(t *testing.T) {
	files := makeAgents(t, 5, sample)
	var mu sync.Mutex
	flushes := 0
	count := func(f *fsutil.FS) error {
		mu.Lock()
		flushes++
		mu.Unlock()
		return f.Sync()
	}
	for _, r := range RewriteAll(files, testUpdate, BatchOptions{Workers: 1, GroupSize: 1, flush: count}) {
		if r.Outcome != Rewritten {
			t.Fatalf("%+v", r)
		}
	}
	if flushes != len(files)+1 { // one per group, one closing
		t.Fatalf("%d flushes, want %d", flushes, len(files)+1)
	}
}

func TestRewriteAllKeepsMode(t *testing.T) {
	files := makeAgents(t, 3, sample)
	os.Chmod(files[1], 0o600)
	os.Chmod(files[2], 0o640)
	for _, r := range RewriteAll(files, testUpdate, BatchOptions{}) {
		if r.Outcome != Rewritten {
			t.Fatal(r.Err)
		}
	}
	for i, want := range []fs.FileMode{0o644, 0o600, 0o640} {
		if fi, _ := os.Stat(files[i]); fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %v", files[i], fi.Mode(), want)
		}
	}
}

// A path listed twice in the same group must not deadlock on its own lock.
func TestRewriteAllDuplicateInGroup(t *testing.T) {
	files := makeAgents(t, 2, sample)
	paths := []string{files[0], files[0], files[1], files[0]}
	done := make(chan []Result)
	go func() { done <- RewriteAll(paths, testUpdate, BatchOptions{Workers: 1}) }()
	select {
	case res := <-done:
		want := []Outcome{Rewritten, Unchanged, Rewritten, Unchanged}
		for i, r := range res {
			if r.Outcome != want[i] {
				t.Fatalf("%d: %v %v, want %v", i, r.Outcome, r.Err, want[i])
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatal("deadlock")
	}
}

// A rewrite reports the identity of the file it renamed into place: a stat
// of the target afterwards is the same file (inode, mtime, size).
func TestCompareAndSwapReportsTheWrittenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	if err := os.WriteFile(p, []byte("stomp_interface: a\nstomp_port: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := CompareAndSwap(p, Update{StompInterface: "b", StompPort: 2, FailoverID: "6ba7b810-9dad-41d1-80b4-00c04fd430c8", Epoch: 3}, false)
	if r.Outcome != Rewritten || r.Written == nil {
		t.Fatalf("%+v", r)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, r.Written) || !fi.ModTime().Equal(r.Written.ModTime()) || fi.Size() != r.Written.Size() {
		t.Fatalf("written %v, on disk %v", r.Written, fi)
	}
	if r = CompareAndSwap(p, Update{StompInterface: "b", StompPort: 2, FailoverID: "6ba7b810-9dad-41d1-80b4-00c04fd430c8", Epoch: 3}, false); r.Outcome != Unchanged || r.Written != nil {
		t.Fatalf("%+v", r)
	}
}
