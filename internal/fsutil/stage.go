package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	dir, base := filepath.Split(target)
	if dir == "" {
		dir = "."
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
	tmp, err := os.CreateTemp(dir, TempPrefix+base+".tmp-*")
	if err != nil {
		return nil, err
	}
	s := &Staged{Target: target, Temp: tmp.Name(), Dir: dir}
	fail := func(err error) (*Staged, error) {
		tmp.Close()
		os.Remove(s.Temp)
		return nil, err
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(fmt.Errorf("write %s: %w", s.Temp, err))
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		_ = tmp.Chown(uid, gid) // best effort: only root may give a file away
	}
	if !opt.NoSync {
		if err := tmp.Sync(); err != nil {
			return fail(fmt.Errorf("fsync %s: %w", s.Temp, err))
		}
	}
	if err := tmp.Close(); err != nil {
		os.Remove(s.Temp)
		return nil, err
	}
	return s, nil
}

// Commit renames the temporary file over the target. The directory is not
// synced: the caller does that (SyncDir or SyncFS) before relying on it.
func (s *Staged) Commit() error {
	if err := os.Rename(s.Temp, s.Target); err != nil {
		os.Remove(s.Temp)
		return err
	}
	return nil
}

// Abort removes the temporary file.
func (s *Staged) Abort() { os.Remove(s.Temp) }
