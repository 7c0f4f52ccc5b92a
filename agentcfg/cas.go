package agentcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// Outcome is what a compare-and-swap did to one file.
type Outcome int

const (
	// Rewritten: the file now holds the update, durably.
	Rewritten Outcome = iota
	// Unchanged: the file already has an equal or newer epoch, or already
	// holds exactly the update. Nothing was written.
	Unchanged
	// Invalid: the file could not be parsed or edited (Err says why). It is
	// left byte-identical.
	Invalid
	// Failed: an I/O error (missing file, permissions, sync failure) or an
	// invalid Update. See Err.
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Rewritten:
		return "rewritten"
	case Unchanged:
		return "unchanged"
	case Invalid:
		return "invalid"
	case Failed:
		return "error"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Result reports one file of a compare-and-swap. Before is the file's
// content before (zero when it could not be read or parsed); After is what
// it holds afterwards (equal to Before unless Rewritten).
type Result struct {
	Path    string
	Outcome Outcome
	Before  Address
	After   Address
	Err     error
}

// LockPath returns the lock file guarding path's target: ".NAME.lock" in the
// same directory. It is created on first use and never removed (removing a
// lock file races with a process about to lock it).
func LockPath(target string) string {
	dir, base := filepath.Split(target)
	return filepath.Join(dir, "."+base+".lock")
}

// isLockName reports whether name is a lock file made by LockPath.
func isLockName(name string) bool {
	b := filepath.Base(name)
	return len(b) > len(".x.lock") && b[0] == '.' && filepath.Ext(b) == ".lock"
}

type fileLock struct{ fd int }

// lockFile takes the exclusive flock guarding target. With wait=false it
// returns errWouldBlock instead of waiting. Raw system calls: a batch pays
// for each one thousands of times.
func lockFile(target string, wait bool) (*fileLock, error) {
	lp := LockPath(target)
	fd, err := openRetry(lp, syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o644)
	if err == syscall.EACCES {
		fd, err = openRetry(lp, syscall.O_RDONLY|syscall.O_CLOEXEC, 0) // flock works read-only too
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lp, err)
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = syscall.Flock(fd, how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		syscall.Close(fd)
		if err == syscall.EWOULDBLOCK {
			return nil, errWouldBlock
		}
		return nil, fmt.Errorf("lock %s: %w", lp, err)
	}
	return &fileLock{fd}, nil
}

var errWouldBlock = errors.New("agentcfg: lock busy")

func (l *fileLock) unlock() {
	if l != nil {
		syscall.Close(l.fd) // closing the only descriptor releases the flock
	}
}

func openRetry(path string, flags int, perm uint32) (int, error) {
	for {
		fd, err := syscall.Open(path, flags, perm)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// readTarget reads a whole file and returns its stat.
func readTarget(path string) ([]byte, *syscall.Stat_t, error) {
	fd, err := openRetry(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, nil, &fs.PathError{Op: "read", Path: path, Err: errors.New("not a regular file")}
	}
	buf := make([]byte, 0, st.Size+512)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):cap(buf)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, &st, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// DefaultMaxFileSize is the largest address.yaml read (1 MiB).
const DefaultMaxFileSize = 1 << 20

// readAgentFile reads a regular file of at most max bytes without blocking
// on a FIFO.
func readAgentFile(path string, max int64) ([]byte, *syscall.Stat_t, error) {
	fd, err := openRetry(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Size > max {
		return nil, nil, &fs.PathError{Op: "read", Path: path, Err: errors.New("not a small regular file")}
	}
	buf := make([]byte, 0, st.Size+1)
	for int64(len(buf)) <= max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):min(cap(buf), int(max)+1)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, &st, nil
		}
		buf = buf[:len(buf)+n]
	}
	return nil, nil, &fs.PathError{Op: "read", Path: path, Err: errors.New("file too large")}
}

// resolveTarget follows symbolic links at path and reports the file a write
// replaces; a missing file is an error.
func resolveTarget(path string) (string, error) {
	target, err := fsutil.ResolveLinks(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(target); err != nil {
		return "", err
	}
	return target, nil
}

// decide reads and parses the locked target and computes the new content.
// It returns out == nil when nothing is to be written (r.Outcome set).
func decide(r *Result, target string, u Update, force bool) ([]byte, *syscall.Stat_t) {
	data, st, err := readTarget(target)
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return nil, nil
	}
	d, err := load(data)
	if err == nil {
		r.Before, err = d.address()
	}
	if err != nil {
		r.Outcome, r.Err = Invalid, fmt.Errorf("%s: %w", r.Path, err)
		return nil, nil
	}
	r.After = r.Before
	if !force && r.Before.FailoverEpoch >= u.Epoch {
		r.Outcome = Unchanged
		return nil, nil
	}
	out, after, err := d.edit(u)
	if err != nil {
		r.Outcome, r.Err = Invalid, fmt.Errorf("%s: %w", r.Path, err)
		return nil, nil
	}
	if bytes.Equal(out, data) {
		r.Outcome = Unchanged
		return nil, nil
	}
	r.After = after
	return out, st
}

// CompareAndSwap rewrites the address.yaml at path with u if its
// failover_epoch is lower than u.Epoch (an absent epoch counts as 0), under an
// exclusive flock on LockPath(target) held from the read to the rename. With
// force the epoch comparison is skipped, so force may also lower the epoch.
// The write is atomic and durable (fsutil.WriteFile): it keeps the file's
// mode and owner, and a symbolic link is kept while its target is replaced.
// A file that cannot be parsed or edited is left byte-identical (Invalid).
func CompareAndSwap(path string, u Update, force bool) Result {
	r := Result{Path: path}
	if err := u.Validate(); err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	target, err := resolveTarget(path)
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	l, err := lockFile(target, true)
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	defer l.unlock()
	out, st := decide(&r, target, u, force)
	if out == nil {
		return r
	}
	staged, err := stage(target, st, out, false)
	if err == nil {
		err = staged.Commit()
	}
	if err == nil {
		err = fsutil.SyncDir(staged.Dir)
	}
	if err != nil {
		r.Outcome, r.Err, r.After = Failed, err, r.Before
		return r
	}
	r.Outcome = Rewritten
	return r
}

// stage writes out to a temporary file beside target with target's mode and
// owner.
func stage(target string, st *syscall.Stat_t, out []byte, noSync bool) (*fsutil.Staged, error) {
	return fsutil.StageAt(target, fs.FileMode(st.Mode&0o777), int(st.Uid), int(st.Gid), out, fsutil.Options{NoSync: noSync})
}
