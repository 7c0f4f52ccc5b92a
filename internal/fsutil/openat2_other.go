//go:build !linux

package fsutil

import "golang.org/x/sys/unix"

// openDirNoLinks has no openat2(2) outside Linux: callers walk.
func openDirNoLinks(string) (int, error) { return -1, unix.ENOSYS }
