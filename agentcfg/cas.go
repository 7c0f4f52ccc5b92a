package agentcfg

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
	"golang.org/x/sys/unix"
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
	// Written, when Rewritten by CompareAndSwap or SetFailoverServers, is
	// the identity (lstat) of the file renamed into place, taken before the
	// rename under the lock: a reader comparing it with a later stat knows
	// whether the file still holds After.
	Written os.FileInfo
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

// DefaultMaxFileSize is the largest address.yaml read (1 MiB): a bigger
// file is Invalid, found before it is parsed.
const DefaultMaxFileSize = 1 << 20

// DefaultLockTimeout is how long a rewrite waits for a file's lock before
// reporting the file Failed (ErrLockTimeout) and moving on.
const DefaultLockTimeout = 5 * time.Second

// target is one agent file being worked on: a handle on the directory
// holding it (beneath the directory its path names; see fsutil.Dir.Resolve)
// and its name there. Every open, create and rename goes through the handle.
type target struct {
	dir  *fsutil.Dir
	name string
}

func (t *target) path() string { return t.dir.Join(t.name) }
func (t *target) close()       { t.dir.Close() }

// openTarget opens the directory of path and resolves path's name beneath
// it. A symbolic link is followed only while it stays beneath the directory;
// a missing file is an error (fs.ErrNotExist).
func openTarget(path string) (*target, error) {
	parent, err := fsutil.OpenDirTrusted(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	d, name, err := parent.Resolve(filepath.Base(path))
	if err != nil {
		return nil, err
	}
	return &target{dir: d, name: name}, nil
}

type fileLock struct{ fd int }

// lockFile takes the exclusive flock on t's lock file, LockPath(t.path()),
// created safely beneath t's directory (fsutil.Dir.OpenLock). With wait it
// tries until timeout has passed (then ErrLockTimeout: a stuck or hostile
// lock holder never stops a batch); without, it returns errWouldBlock at
// once.
func lockFile(t *target, wait bool, timeout time.Duration) (*fileLock, error) {
	name := "." + t.name + ".lock"
	fd, err := t.dir.OpenLock(name)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	var deadline time.Time
	pause := time.Millisecond
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == syscall.EINTR {
			continue
		}
		if err != syscall.EWOULDBLOCK || !wait {
			break
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(timeout)
		}
		if !now.Before(deadline) {
			syscall.Close(fd)
			return nil, fmt.Errorf("%s: %w: held by another process for more than %v; not rewritten, will be retried",
				t.dir.Join(name), ErrLockTimeout, timeout)
		}
		time.Sleep(min(pause, deadline.Sub(now)))
		pause = min(2*pause, 50*time.Millisecond)
	}
	if err != nil {
		syscall.Close(fd)
		if err == syscall.EWOULDBLOCK {
			return nil, errWouldBlock
		}
		return nil, fmt.Errorf("lock %s: %w", t.dir.Join(name), err)
	}
	return &fileLock{fd}, nil
}

var errWouldBlock = errors.New("agentcfg: lock busy")

func (l *fileLock) unlock() {
	if l != nil {
		syscall.Close(l.fd) // closing the only descriptor releases the flock
	}
}

// bigFile: files above it are parsed one at a time. yaml.v3 allocates about
// 100 times a file's size to parse it, and a real address.yaml is well under
// a kilobyte; this keeps a fleet of planted 1 MiB files from costing a
// worker count's worth of parses at once.
const bigFile = 64 << 10

var bigParse = make(chan struct{}, 1)

// loadBounded is load, serialised for big inputs.
func loadBounded(data []byte) (*doc, error) {
	if len(data) > bigFile {
		bigParse <- struct{}{}
		defer func() { <-bigParse }()
	}
	return load(data)
}

// readAgentFile reads the agent file at path the safe way: its directory
// opened as a handle, symbolic links followed only beneath it, no FIFO
// blocking, regular files only, at most max bytes (max <= 0:
// DefaultMaxFileSize).
func readAgentFile(path string, max int64) ([]byte, *unix.Stat_t, error) {
	t, err := openTarget(path)
	if err != nil {
		return nil, nil, err
	}
	defer t.close()
	return readTarget(t, max)
}

func readTarget(t *target, max int64) ([]byte, *unix.Stat_t, error) {
	if max <= 0 {
		max = DefaultMaxFileSize
	}
	data, st, err := t.dir.ReadRegular(t.name, max)
	if errors.Is(err, ErrTooLarge) {
		err = fmt.Errorf("%w (max_agent_file_size)", err)
	}
	return data, st, err
}

// readLocked reads and parses the locked target into r.Before (and
// r.After): nil with r.Outcome set when it cannot be read or parsed.
func readLocked(r *Result, t *target, opt BatchOptions) (*doc, []byte, *unix.Stat_t) {
	data, st, err := readTarget(t, opt.MaxFileSize)
	if errors.Is(err, ErrTooLarge) {
		r.Outcome, r.Err = Invalid, err
		return nil, nil, nil
	}
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return nil, nil, nil
	}
	d, err := opt.parse(r.Path, data)
	if err == nil {
		r.Before, err = d.address()
	}
	if err != nil {
		r.Outcome, r.Err = Invalid, fmt.Errorf("%s: %w", r.Path, err)
		return nil, nil, nil
	}
	r.After = r.Before
	return d, data, st
}

// decide reads and parses the locked target and computes the new content.
// It returns out == nil when nothing is to be written (r.Outcome set).
func decide(r *Result, t *target, u Update, opt BatchOptions) ([]byte, *unix.Stat_t) {
	d, data, st := readLocked(r, t, opt)
	if d == nil {
		return nil, nil
	}
	if !opt.Force && !u.newerThan(r.Before) {
		r.Outcome = Unchanged
		return nil, nil
	}
	out, after, err := d.edit(u)
	return edited(r, data, st, out, after, err)
}

// edited is the end of a locked edit: the new content to write, or nil
// with r.Outcome set (Invalid on an edit error, Unchanged when identical).
func edited(r *Result, data []byte, st *unix.Stat_t, out []byte, after Address, err error) ([]byte, *unix.Stat_t) {
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
// The write is atomic and durable; it keeps the file's mode, and its owner
// when that owner also owns the directory. A symbolic link is followed only
// if it stays beneath the file's directory (the link is kept and its target
// replaced); any other link, a FIFO, a directory or another non-regular file
// is Failed, a file larger than DefaultMaxFileSize Invalid. A file that
// cannot be parsed or edited is left byte-identical (Invalid). It is
// CompareAndSwapWith with only Force set.
func CompareAndSwap(path string, u Update, force bool) Result {
	return CompareAndSwapWith(path, u, BatchOptions{Force: force})
}

// CompareAndSwapWith is CompareAndSwap for one file with the options of a
// batch: Force, MaxFileSize, LockTimeout and Flusher (the others are
// ignored).
func CompareAndSwapWith(path string, u Update, opt BatchOptions) Result {
	if err := u.Validate(); err != nil {
		return Result{Path: path, Outcome: Failed, Err: err}
	}
	return rewriteLocked(path, opt, func(r *Result, t *target) ([]byte, *unix.Stat_t) {
		return decide(r, t, u, opt)
	})
}

// rewriteLocked is one file's locked read-decide-write: under the exclusive
// flock on LockPath(target), decide computes the new content (nil: nothing
// to write, r.Outcome set), which is then written atomically and durably.
func rewriteLocked(path string, opt BatchOptions, decide func(r *Result, t *target) ([]byte, *unix.Stat_t)) Result {
	r := Result{Path: path}
	if f := opt.Flusher; f != nil {
		f.enter() // bounds the descriptors its rewrites hold at once
		defer f.leave()
	}
	t, err := openTarget(path)
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	defer t.close()
	l, err := lockFile(t, true, opt.lockTimeout())
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	defer l.unlock()
	if f := opt.Flusher; f != nil {
		f.acquire()
		out, st := decide(&r, t)
		if out == nil {
			f.release()
			return r
		}
		return f.write(r, t, out, st)
	}
	out, st := decide(&r, t)
	if out == nil {
		return r
	}
	staged, err := t.dir.Stage(t.name, out, st, fsutil.Options{})
	var written os.FileInfo
	if err == nil {
		written = staged.Info
		err = staged.Commit()
	}
	if err == nil {
		err = t.dir.Sync()
	}
	if err != nil {
		r.Outcome, r.Err, r.After = Failed, err, r.Before
		return r
	}
	r.Outcome, r.Written = Rewritten, written
	return r
}

// newerThan reports whether u's token (epoch, then failover id) is above
// the file's: the compare-and-swap rewrites only then. An equal epoch is
// broken by the failover id, as failoverid.Token orders them, so two
// servers that claimed one epoch without hearing each other cannot split
// the files between them for good.
func (u Update) newerThan(a Address) bool {
	if u.Epoch == 0 {
		return false // no server writes epoch 0: it is "no token"
	}
	if u.Epoch != a.FailoverEpoch {
		return u.Epoch > a.FailoverEpoch
	}
	return u.FailoverID > a.FailoverID
}
