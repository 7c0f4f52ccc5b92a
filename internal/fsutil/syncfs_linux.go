package fsutil

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SyncFS flushes the whole file system holding path (syncfs(2)): every file
// and directory change made on it so far is durable when it returns nil. One
// call replaces many fsyncs for a batch of small files.
func SyncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}
