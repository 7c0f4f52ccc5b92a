package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Staged is new content for a file, written to a temporary file next to it
// but not yet renamed over it. It lets a batch writer flush many temporary
// files with one sync (see SyncFS) before renaming any of them, so that a
// crash or power cut leaves every target either old or new.
type Staged struct {
	Target string // the file Commit replaces (symbolic links resolved)
	Temp   string // the temporary file
	Dir    string // the directory holding both
	// Info is the temporary file's identity as staged (fstat(2) of the
	// descriptor before it was closed: inode, mtime, size), nil if that
	// failed. A rename does not change it: it is the committed file's.
	Info os.FileInfo

	d      *Dir   // the handle Commit renames through
	ownDir bool   // Commit and Abort close d (Stage by path)
	name   string // Target's name in d
	temp   string // Temp's name in d
	done   bool   // committed or aborted
}

// Stage writes data to a temporary file in the directory of path's target
// (symbolic links resolved, for tandem's own files in directories only it
// writes; agent files use Dir.Stage), with the target's mode and, when the
// target's owner also owns the directory, its owner (see Dir.Stage). The
// temporary file is fsynced unless opt.NoSync.
func Stage(path string, data []byte, opt Options) (*Staged, error) {
	target, err := ResolveLinks(path)
	if err != nil {
		return nil, err
	}
	d, err := OpenDir(filepath.Dir(target))
	if err != nil {
		return nil, err
	}
	name := filepath.Base(target)
	var old *unix.Stat_t
	var st unix.Stat_t
	if err := fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		old = &st
	} else if !errors.Is(err, unix.ENOENT) {
		d.Close()
		return nil, &fs.PathError{Op: "stat", Path: target, Err: err}
	}
	s, err := d.Stage(name, data, old, opt)
	if err != nil {
		d.Close()
		return nil, err
	}
	s.Target, s.ownDir = target, true
	return s, nil
}

// Commit renames the temporary file over the target, relative to the
// directory handle. The directory is not synced: the caller does that
// (SyncDir, Dir.Sync or SyncFS) before relying on it.
func (s *Staged) Commit() error {
	if s.done {
		return errors.New("fsutil: Commit after Commit or Abort")
	}
	err := unix.Renameat(s.d.fd, s.temp, s.d.fd, s.name)
	if err != nil {
		unix.Unlinkat(s.d.fd, s.temp, 0)
	}
	s.release()
	if err != nil {
		return &os.LinkError{Op: "rename", Old: s.Temp, New: s.Target, Err: err}
	}
	return nil
}

// Abort removes the temporary file. After Commit it does nothing.
func (s *Staged) Abort() {
	if s.done {
		return
	}
	unix.Unlinkat(s.d.fd, s.temp, 0)
	s.release()
}

func (s *Staged) release() {
	s.done = true
	if s.ownDir {
		s.d.Close()
		s.ownDir = false
	}
}
