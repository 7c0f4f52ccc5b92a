package agentcfg

import (
	"bytes"
	"errors"
	"fmt"
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

type fileLock struct{ f *os.File }

// lockFile takes the exclusive flock guarding target. With wait=false it
// returns errWouldBlock instead of waiting.
func lockFile(target string, wait bool) (*fileLock, error) {
	lp := LockPath(target)
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o644)
	if errors.Is(err, os.ErrPermission) {
		f, err = os.Open(lp) // flock works on a read-only descriptor too
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lp, err)
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errWouldBlock
		}
		return nil, fmt.Errorf("lock %s: %w", lp, err)
	}
	return &fileLock{f}, nil
}

var errWouldBlock = errors.New("agentcfg: lock busy")

func (l *fileLock) unlock() {
	if l != nil {
		l.f.Close() // closing the only descriptor releases the flock
	}
}

// decide reads and parses the locked target and computes the new content.
// It returns out == nil when nothing is to be written (r.Outcome set).
func decide(r *Result, target string, u Update, force bool) []byte {
	data, err := os.ReadFile(target)
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return nil
	}
	d, err := load(data)
	if err == nil {
		r.Before, err = d.address()
	}
	if err != nil {
		r.Outcome, r.Err = Invalid, fmt.Errorf("%s: %w", r.Path, err)
		return nil
	}
	r.After = r.Before
	if !force && r.Before.FailoverEpoch >= u.Epoch {
		r.Outcome = Unchanged
		return nil
	}
	out, after, err := d.edit(u)
	if err != nil {
		r.Outcome, r.Err = Invalid, fmt.Errorf("%s: %w", r.Path, err)
		return nil
	}
	if bytes.Equal(out, data) {
		r.Outcome = Unchanged
		return nil
	}
	r.After = after
	return out
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
	target, err := fsutil.ResolveLinks(path)
	if err == nil {
		_, err = os.Stat(target)
	}
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
	out := decide(&r, target, u, force)
	if out == nil {
		return r
	}
	if err := fsutil.WriteFile(target, out, fsutil.Options{Perm: 0o644}); err != nil {
		r.Outcome, r.Err, r.After = Failed, err, r.Before
		return r
	}
	r.Outcome = Rewritten
	return r
}

// devOf returns the device number of the file system holding path (0 when
// unknown).
func devOf(path string) uint64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev)
	}
	return 0
}
