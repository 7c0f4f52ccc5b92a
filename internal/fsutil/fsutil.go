// Package fsutil holds the one durable, atomic file write that every tandem
// file goes through: failover_id, state.json and agents' address.yaml.
//
// A write goes to a temporary file in the target's directory, is fsynced,
// renamed over the target and the directory is fsynced. A reader therefore
// sees either the whole old file or the whole new one, and after the call
// returns the new content survives a power cut. kill -9 at any moment leaves
// at most a stray temporary file (named ".NAME.tmp-*"), never a partial target.
package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TempPrefix starts the name of every temporary file WriteFile creates.
const TempPrefix = "."

// Options tune WriteFile.
type Options struct {
	// Perm is the mode of a newly created file. When the target exists its
	// mode is kept instead, and its owner and group when that owner also
	// owns the directory (see Dir.Stage).
	Perm fs.FileMode
	// NoSync skips the file and directory fsyncs. Only for callers that sync
	// a whole batch themselves (see SyncDir) before reporting success.
	NoSync bool
}

// WriteFile atomically replaces path with data. If path is a symbolic link the
// link's target is written and the link is kept: WriteFile is for tandem's
// own files, in directories only tandem's user writes. Files in directories
// other users may write go through Dir. Unless opt.NoSync, the file
// and the directory are fsynced before it returns.
func WriteFile(path string, data []byte, opt Options) error {
	st, err := Stage(path, data, opt)
	if err != nil {
		return err
	}
	if err := st.Commit(); err != nil {
		st.Abort()
		return err
	}
	if opt.NoSync {
		return nil
	}
	return SyncDir(st.Dir)
}

// SyncDir fsyncs a directory so that renames and creations in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// ResolveLinks follows symbolic links at path (also a dangling final link)
// and returns the path of the file a write should replace.
func ResolveLinks(path string) (string, error) {
	for i := 0; i < 40; i++ {
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return path, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return path, nil
		}
		dest, err := os.Readlink(path)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(path), dest)
		}
		path = dest
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", path)
}

// IsTemp reports whether name is a temporary file left by an interrupted WriteFile.
func IsTemp(name string) bool {
	b := filepath.Base(name)
	return strings.HasPrefix(b, TempPrefix) && strings.Contains(b, ".tmp-")
}
