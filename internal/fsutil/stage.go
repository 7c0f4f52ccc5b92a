package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Staged is new content for a file, written to a temporary file next to it
// but not yet renamed over it. It lets a batch writer flush many temporary
// files with one sync (see SyncFS) before renaming any of them, so that a
// crash or power cut leaves every target either old or new.
type Staged struct {
	Target string // the file Commit replaces (symbolic links resolved)
	Temp   string // the temporary file
	Dir    string // the directory holding both
}

// Stage writes data to a temporary file in the directory of path's target
// (symbolic links resolved), with the target's mode and, when possible, owner.
// The temporary file is fsynced unless opt.NoSync.
func Stage(path string, data []byte, opt Options) (*Staged, error) {
	target, err := ResolveLinks(path)
	if err != nil {
		return nil, err
	}
	perm := opt.Perm
	if perm == 0 {
		perm = 0o644
	}
	uid, gid := -1, -1
	if st, err := os.Stat(target); err == nil {
		perm = st.Mode().Perm()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(sys.Uid), int(sys.Gid)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return StageAt(target, perm, uid, gid, data, opt)
}

// StageAt is Stage for a caller that has already resolved the target and
// knows the mode and owner to give it (uid < 0: keep the caller's). It uses
// raw system calls only: a batch of thousands of files pays for every one.
func StageAt(target string, perm fs.FileMode, uid, gid int, data []byte, opt Options) (*Staged, error) {
	dir, base := filepath.Split(target)
	if dir == "" {
		dir = "."
	}
	s := &Staged{Target: target, Dir: dir}
	var fd int
	var err error
	for try := 0; ; try++ {
		s.Temp = filepath.Join(dir, TempPrefix+base+".tmp-"+strconv.FormatUint(rand.Uint64()%1e10, 10))
		fd, err = syscall.Open(s.Temp, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, uint32(perm.Perm()))
		if err == syscall.EINTR || err == syscall.EEXIST && try < 100 {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: s.Temp, Err: err}
		}
		break
	}
	fail := func(err error) (*Staged, error) {
		syscall.Close(fd)
		syscall.Unlink(s.Temp)
		return nil, err
	}
	for b := data; len(b) > 0; {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("write %s: %w", s.Temp, err))
		}
		b = b[n:]
	}
	// The umask may have narrowed the mode given to open.
	if err := syscall.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return fail(&fs.PathError{Op: "chmod", Path: s.Temp, Err: err})
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		_ = syscall.Fchown(fd, uid, gid) // best effort: only root may give a file away
	}
	if !opt.NoSync {
		if err := syscall.Fsync(fd); err != nil {
			return fail(fmt.Errorf("fsync %s: %w", s.Temp, err))
		}
	}
	if err := syscall.Close(fd); err != nil {
		syscall.Unlink(s.Temp)
		return nil, &fs.PathError{Op: "close", Path: s.Temp, Err: err}
	}
	return s, nil
}

// Commit renames the temporary file over the target. The directory is not
// synced: the caller does that (SyncDir or SyncFS) before relying on it.
func (s *Staged) Commit() error {
	if err := syscall.Rename(s.Temp, s.Target); err != nil {
		syscall.Unlink(s.Temp)
		return &os.LinkError{Op: "rename", Old: s.Temp, New: s.Target, Err: err}
	}
	return nil
}

// Abort removes the temporary file.
func (s *Staged) Abort() { syscall.Unlink(s.Temp) }
