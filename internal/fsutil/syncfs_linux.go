package fsutil

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FS is an open handle on the file system holding a directory, for syncfs(2).
// Linux reports a writeback error to syncfs only on descriptors opened
// before the error, so a batch writer opens its FS before writing anything
// and syncs through it: then no failed writeback of its data goes unreported.
type FS struct{ f *os.File }

// OpenFS opens the file system holding path.
func OpenFS(path string) (*FS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &FS{f}, nil
}

// Sync flushes the whole file system (syncfs(2)): every file and directory
// change made on it so far is durable when it returns nil.
func (s *FS) Sync() error {
	if err := unix.Syncfs(int(s.f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", s.f.Name(), err)
	}
	return nil
}

// Close releases the handle.
func (s *FS) Close() error { return s.f.Close() }

// SyncFS flushes the whole file system holding path (syncfs(2)). Prefer
// OpenFS before writing when every writeback error must be seen.
func SyncFS(path string) error {
	s, err := OpenFS(path)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Sync()
}
