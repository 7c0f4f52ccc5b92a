//go:build linux

package agentcfg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Agent files are hostile input: the agent's owner can write the directory
// holding address.yaml, and can put anything there at any moment. Each test
// here is an attack that worked on the path-based code (see
// ARCHITECTURE.md, "Agent files are hostile input").

const attackerUID = 4242

func init() {
	childModes["swap"] = func(files []string) error { return runSwap(files[0]) }
}

// oneLineNaming fails unless err is one line that names path.
func oneLineNaming(t *testing.T, err error, path, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %s", path)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, path) || !strings.Contains(msg, want) {
		t.Fatalf("error %q: want one line naming %s and saying %q", msg, path, want)
	}
}

// within runs f and fails the test if it has not returned after d (the
// attack made it block); f keeps running in the background then.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
	}
}

// sameFile fails if path's content, mode or owner changed from before.
type snapshot struct {
	data string
	mode os.FileMode
	uid  uint32
}

func snap(t *testing.T, path string) snapshot {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{readFile(t, path), fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid}
}

// dirNames lists a directory's entries (to catch stray lock or temp files).
func dirNames(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return strings.Join(n, ",")
}

// Attack: address.yaml is a symbolic link to a file outside its directory
// (a root-only stand-in for /etc/passwd that happens to parse). The old code
// rewrote it and created a lock file beside it; now it is refused, untouched.
func TestHostileSymlinkLeavesTheDirectory(t *testing.T) {
	root := t.TempDir()
	secretDir := filepath.Join(root, "secret")
	secret := filepath.Join(secretDir, "passwd")
	writeFile(t, secret, sample)
	os.Chmod(secretDir, 0o700)
	before := snap(t, secret)
	conf := filepath.Join(root, "agent", "conf")
	os.MkdirAll(filepath.Join(conf, "sub"), 0o755)

	for _, tc := range []struct{ name, link, via string }{
		{"absolute", secret, ""},
		{"dotdot", "../../secret/passwd", ""},
		{"second link climbs out", "sub/hop", "../../../secret/passwd"},
		{"to /dev/zero", "/dev/zero", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(conf, "address.yaml")
			os.Remove(p)
			os.Remove(filepath.Join(conf, "sub", "hop"))
			if err := os.Symlink(tc.link, p); err != nil {
				t.Fatal(err)
			}
			if tc.via != "" {
				if err := os.Symlink(tc.via, filepath.Join(conf, "sub", "hop")); err != nil {
					t.Fatal(err)
				}
			}
			r := CompareAndSwap(p, testUpdate, false)
			if r.Outcome != Failed || !errors.Is(r.Err, ErrSymlinkEscapes) {
				t.Fatalf("CompareAndSwap: %v %v", r.Outcome, r.Err)
			}
			oneLineNaming(t, r.Err, conf, "symlink leaves the agent directory")
			res := RewriteAll([]string{p}, testUpdate, BatchOptions{Force: true})
			if res[0].Outcome != Failed || !errors.Is(res[0].Err, ErrSymlinkEscapes) {
				t.Fatalf("RewriteAll: %v %v", res[0].Outcome, res[0].Err)
			}
			if _, err := ReadFile(p); !errors.Is(err, ErrSymlinkEscapes) {
				t.Fatalf("ReadFile: %v", err)
			}
			if got := snap(t, secret); got != before {
				t.Fatalf("the outside file changed: %+v, was %+v", got, before)
			}
			if n := dirNames(t, secretDir); n != "passwd" {
				t.Fatalf("files created beside the outside file: %s", n)
			}
		})
	}
}

// Attack: the lock file is pre-created as a symbolic link (dangling, or to
// an outside file). The old code created the link's target (O_CREAT follows
// a dangling link) and locked whatever it named.
func TestHostileLockFileSymlink(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(root, "outside")
	os.MkdirAll(outside, 0o755)
	p := filepath.Join(root, "agent", "conf", "address.yaml")
	writeFile(t, p, sample)
	for _, link := range []string{filepath.Join(outside, "created-by-tandem"), "../../outside/created-by-tandem"} {
		os.Remove(LockPath(p))
		if err := os.Symlink(link, LockPath(p)); err != nil {
			t.Fatal(err)
		}
		r := CompareAndSwap(p, testUpdate, false)
		if r.Outcome != Failed || !errors.Is(r.Err, ErrNotRegular) {
			t.Fatalf("%s: %v %v", link, r.Outcome, r.Err)
		}
		oneLineNaming(t, r.Err, LockPath(p), "is a symbolic link, expected a regular lock file")
		if n := dirNames(t, outside); n != "" {
			t.Fatalf("created at the lock link's target: %s", n)
		}
		if readFile(t, p) != sample {
			t.Fatal("rewritten without its lock")
		}
	}
}

// Attack: address.yaml (or its lock file) is a FIFO. The old code blocked
// in open(2) forever, in the reader (survey, agents list) and the rewrite.
func TestHostileFIFO(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "conf")
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, "address.yaml")
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	// Should a read block anyway, a writer opening the FIFO at the end
	// releases it, so that the test binary can exit.
	t.Cleanup(func() {
		if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	within(t, 5*time.Second, "ReadFile of a FIFO", func() {
		_, err := ReadFile(p)
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("ReadFile: %v", err)
			return
		}
		oneLineNaming(t, err, p, "is a named pipe (FIFO), expected a regular file")
	})
	within(t, 5*time.Second, "CompareAndSwap of a FIFO", func() {
		if r := CompareAndSwap(p, testUpdate, false); r.Outcome != Failed || !errors.Is(r.Err, ErrNotRegular) {
			t.Errorf("CompareAndSwap: %v %v", r.Outcome, r.Err)
		}
	})
	within(t, 5*time.Second, "RewriteAll with a FIFO", func() {
		ok := filepath.Join(filepath.Dir(dir), "ok", "address.yaml")
		writeFile(t, ok, sample)
		res := RewriteAll([]string{p, ok}, testUpdate, BatchOptions{})
		if res[0].Outcome != Failed || res[1].Outcome != Rewritten {
			t.Errorf("RewriteAll: %v %v / %v %v", res[0].Outcome, res[0].Err, res[1].Outcome, res[1].Err)
		}
	})

	// A FIFO as the lock file.
	q := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, q, sample)
	if err := syscall.Mkfifo(LockPath(q), 0o644); err != nil {
		t.Fatal(err)
	}
	within(t, 5*time.Second, "a FIFO lock file", func() {
		r := CompareAndSwap(q, testUpdate, false)
		if r.Outcome != Failed || !errors.Is(r.Err, ErrNotRegular) {
			t.Errorf("%v %v", r.Outcome, r.Err)
		}
	})
}

// Attack: the agent's owner holds the flock on the lock file forever. The
// old code waited with no timeout; now the wait is bounded, the file is
// Failed with ErrLockTimeout, the batch goes on, and a later retry works.
func TestHostileHeldLock(t *testing.T) {
	files := makeAgents(t, 3, sample)
	held := files[1]
	lf, err := os.OpenFile(LockPath(held), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	// Default options: bounded by DefaultLockTimeout.
	within(t, DefaultLockTimeout+5*time.Second, "CompareAndSwap on a held lock", func() {
		r := CompareAndSwap(held, testUpdate, false)
		if r.Outcome != Failed || !errors.Is(r.Err, ErrLockTimeout) {
			t.Errorf("%v %v", r.Outcome, r.Err)
			return
		}
		oneLineNaming(t, r.Err, LockPath(held), "held by another process")
	})
	t0 := time.Now()
	res := RewriteAll(files, testUpdate, BatchOptions{Workers: 1, LockTimeout: 100 * time.Millisecond})
	if el := time.Since(t0); el > 3*time.Second {
		t.Fatalf("batch took %v", el)
	}
	for i, want := range []Outcome{Rewritten, Failed, Rewritten} {
		if res[i].Outcome != want {
			t.Fatalf("%d: %v %v, want %v", i, res[i].Outcome, res[i].Err, want)
		}
	}
	if !errors.Is(res[1].Err, ErrLockTimeout) || readFile(t, held) != sample {
		t.Fatalf("held file: %v", res[1].Err)
	}
	// Released: the retry goes through.
	syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	if r := CompareAndSwapWith(held, testUpdate, BatchOptions{LockTimeout: time.Second}); r.Outcome != Rewritten {
		t.Fatalf("retry: %v %v", r.Outcome, r.Err)
	}
}

// Attack: a huge file. address.yaml as a 40 GiB sparse file made the old
// code allocate its size and parse it (an 8 MiB file cost 2.3 GiB); now the
// size is checked before reading and at most max+1 bytes are read.
func TestHostileHugeFile(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "a", "address.yaml")
	writeFile(t, sparse, sample)
	if err := os.Truncate(sparse, 40<<30); err != nil {
		t.Skipf("cannot make a 40 GiB sparse file here: %v", err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := ReadFile(sparse)
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadFile: %v", err)
	}
	oneLineNaming(t, err, sparse, "expected at most 1048576 (max_agent_file_size)")
	if a := m1.TotalAlloc - m0.TotalAlloc; a > 1<<20 {
		t.Fatalf("allocated %d bytes to refuse a huge file", a)
	}
	if r := CompareAndSwap(sparse, testUpdate, true); r.Outcome != Invalid || !errors.Is(r.Err, ErrTooLarge) {
		t.Fatalf("CompareAndSwap: %v %v", r.Outcome, r.Err)
	}

	// Just over the default limit, and a caller's own limit.
	big := filepath.Join(dir, "b", "address.yaml")
	writeFile(t, big, sample+"#"+strings.Repeat("x", DefaultMaxFileSize)+"\n")
	if _, err := ReadFile(big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("just over the limit: %v", err)
	}
	small := filepath.Join(dir, "c", "address.yaml")
	writeFile(t, small, sample)
	if _, err := ReadFileWith(small, ReadOptions{MaxFileSize: int64(len(sample))}); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	if _, err := ReadFileWith(small, ReadOptions{MaxFileSize: int64(len(sample)) - 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("one byte over a caller's limit: %v", err)
	}
	res := RewriteAll([]string{small, big}, testUpdate, BatchOptions{MaxFileSize: int64(len(sample))})
	if res[0].Outcome != Rewritten || res[1].Outcome != Invalid || !errors.Is(res[1].Err, ErrTooLarge) {
		t.Fatalf("RewriteAll: %+v", res)
	}
}

// Attack: a directory in place of address.yaml. It used to drop silently
// out of the managed set (Expand skipped it); now it is listed and reported.
func TestHostileDirectoryInPlace(t *testing.T) {
	root := t.TempDir()
	files := []string{filepath.Join(root, "a", "conf", "address.yaml"), filepath.Join(root, "b", "conf", "address.yaml")}
	writeFile(t, files[0], sample)
	os.MkdirAll(files[1], 0o755)
	got, err := Expand([]string{filepath.Join(root, "*", "conf", "address.yaml")})
	if err != nil || len(got) != 2 || got[1] != files[1] {
		t.Fatalf("Expand = %v %v: the directory must stay managed (and be reported)", got, err)
	}
	res := RewriteAll(got, testUpdate, BatchOptions{})
	if res[0].Outcome != Rewritten || res[1].Outcome != Failed || !errors.Is(res[1].Err, ErrNotRegular) {
		t.Fatalf("%+v", res)
	}
	oneLineNaming(t, res[1].Err, files[1], "is a directory, expected a regular file")
	if _, err := ReadFile(files[1]); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("ReadFile: %v", err)
	}
}

// Attack (no race): the agent's conf directory is replaced by a symbolic
// link to a directory only root may write. A link in a directory other
// users may write is not followed (the old code rewrote the file in there).
func TestHostileDirectorySymlink(t *testing.T) {
	root := t.TempDir()
	secretDir := filepath.Join(root, "secret")
	secret := filepath.Join(secretDir, "address.yaml")
	writeFile(t, secret, sample)
	os.Chmod(secretDir, 0o700)
	before := snap(t, secret)
	agent := filepath.Join(root, "agent")
	os.MkdirAll(agent, 0o755)
	if os.Geteuid() == 0 {
		if err := os.Lchown(agent, attackerUID, attackerUID); err != nil {
			t.Fatal(err)
		}
	} else {
		os.Chmod(agent, 0o777) // not root: a world-writable directory plays the agent's
	}
	if err := os.Symlink("../secret", filepath.Join(agent, "conf")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(agent, "conf", "address.yaml")
	r := CompareAndSwap(p, testUpdate, true)
	if r.Outcome != Failed {
		t.Fatalf("%v %v", r.Outcome, r.Err)
	}
	oneLineNaming(t, r.Err, filepath.Join(agent, "conf"), "which other users may write")
	if _, err := ReadFile(p); err == nil {
		t.Fatal("ReadFile followed the planted link")
	}
	if got := snap(t, secret); got != before {
		t.Fatalf("the root-only file changed: %+v", got)
	}
	if n := dirNames(t, secretDir); n != "address.yaml" {
		t.Fatalf("files created in the root-only directory: %s", n)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the attacker runs as another uid, and a file's owner can only be given away by root")
	}
}

// Owners: a rewritten file keeps its owner only when that owner also owns
// the directory. The old code gave the new file to whoever owned the old one.
func TestHostileOwnerNotGivenAway(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	owned := func(dirUID, fileUID int) string {
		p := filepath.Join(root, fmt.Sprintf("dir%d-file%d", dirUID, fileUID), "address.yaml")
		writeFile(t, p, sample)
		os.Chmod(p, 0o664)
		if err := os.Lchown(filepath.Dir(p), dirUID, dirUID); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, fileUID, fileUID); err != nil {
			t.Fatal(err)
		}
		return p
	}
	agentsOwn := owned(attackerUID, attackerUID) // the agent's own directory and file
	planted := owned(0, attackerUID)             // a user's file in root's directory
	for _, tc := range []struct {
		path string
		uid  uint32
	}{{agentsOwn, attackerUID}, {planted, 0}} {
		if r := CompareAndSwap(tc.path, testUpdate, false); r.Outcome != Rewritten {
			t.Fatalf("%s: %v %v", tc.path, r.Outcome, r.Err)
		}
		fi, _ := os.Stat(tc.path)
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != tc.uid || fi.Mode().Perm() != 0o664 {
			t.Fatalf("%s: owner %d mode %v, want owner %d mode 0664", tc.path, st.Uid, fi.Mode().Perm(), tc.uid)
		}
	}
	// The same through a batch.
	os.Lchown(planted, attackerUID, attackerUID)
	for _, r := range RewriteAll([]string{planted}, withEpoch(9), BatchOptions{}) {
		fi, _ := os.Stat(r.Path)
		if r.Outcome != Rewritten || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Fatalf("batch: %v %v, owner %d", r.Outcome, r.Err, fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
}

// Attack (race): a process running as the agent's uid swaps the conf
// directory with a symbolic link to a root-only directory, as fast as it
// can, while tandem rewrites the file again and again. With the old code a
// swap between the read and the write made a root-owned stand-in for
// /etc/passwd mode 0666, owned by the agent user, with the attacker's
// content. Now every step goes through one directory handle, so the
// root-only file never changes, whatever the timing.
func TestHostileDirectorySwapRace(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	// The attacker must be able to reach its directory.
	for d := root; d != filepath.Dir(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			old := fi.Mode().Perm()
			os.Chmod(d, old|0o005)
			t.Cleanup(func() { os.Chmod(d, old) })
		}
	}
	secretDir := filepath.Join(root, "secret")
	secret := filepath.Join(secretDir, "address.yaml")
	writeFile(t, secret, sample)
	os.Chmod(secretDir, 0o700)
	before := snap(t, secret)

	agent := filepath.Join(root, "agent")
	conf := filepath.Join(agent, "conf")
	p := filepath.Join(conf, "address.yaml")
	writeFile(t, p, sample)
	os.Chmod(p, 0o666)
	for _, q := range []string{agent, conf, p} {
		if err := os.Lchown(q, attackerUID, attackerUID); err != nil {
			t.Fatal(err)
		}
	}
	// The attacker: a copy of this test binary it may execute, running as
	// uid 4242, exchanging conf with a link to the secret directory.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "attacker.test")
	copyExe(t, exe, bin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "AGENTCFG_CHILD=1", "AGENTCFG_MODE=swap", "AGENTCFG_FILES="+agent)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackerUID, Gid: attackerUID}}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()

	// Wait until the attacker is swapping.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Lstat(filepath.Join(agent, "link")); err == nil && fi.IsDir() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the attacker never swapped")
		}
		time.Sleep(time.Millisecond)
	}
	var rewritten, failed int
	stop := time.Now().Add(2 * time.Second)
	for e := uint64(1); time.Now().Before(stop); e++ {
		switch r := CompareAndSwap(p, withEpoch(e), true); r.Outcome {
		case Rewritten:
			rewritten++
		default:
			failed++
		}
		if e%2 == 0 {
			RewriteAll([]string{p}, withEpoch(e), BatchOptions{Force: true})
		}
	}
	cancel()
	t.Logf("%d rewrites through the agent's directory, %d refused", rewritten, failed)
	if got := snap(t, secret); got != before {
		t.Fatalf("the root-only file changed: %+v, was %+v", got, before)
	}
	if n := dirNames(t, secretDir); n != "address.yaml" {
		t.Fatalf("files created in the root-only directory: %s", n)
	}
}

// runSwap is the attacker of TestHostileDirectorySwapRace: it exchanges
// DIR/conf and DIR/link (a symbolic link to ../secret) until killed.
func runSwap(dir string) error {
	conf, link := filepath.Join(dir, "conf"), filepath.Join(dir, "link")
	if err := os.Symlink("../secret", link); err != nil {
		return err
	}
	for {
		if err := unix.Renameat2(unix.AT_FDCWD, conf, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
	}
}

func copyExe(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
