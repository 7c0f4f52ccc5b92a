//go:build !linux

package fsutil

import "syscall"

// SyncFS flushes the file systems (sync(2)); on Linux it is syncfs(2) on the
// file system holding path only.
func SyncFS(path string) error {
	syscall.Sync()
	return nil
}
