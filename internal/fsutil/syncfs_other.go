//go:build !linux

package fsutil

import (
	"os"
	"syscall"
)

// FS is an open handle on the file system holding a directory. Outside
// Linux, Sync is sync(2).
type FS struct{ f *os.File }

// OpenFS opens the file system holding path.
func OpenFS(path string) (*FS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &FS{f}, nil
}

// Sync flushes the file systems (sync(2)).
func (s *FS) Sync() error {
	syscall.Sync()
	return nil
}

// Close releases the handle.
func (s *FS) Close() error { return s.f.Close() }

// SyncFS flushes the file systems (sync(2)); on Linux it is syncfs(2) on the
// file system holding path only.
func SyncFS(path string) error {
	syscall.Sync()
	return nil
}
