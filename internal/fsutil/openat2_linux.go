package fsutil

import "golang.org/x/sys/unix"

// openDirNoLinks opens the directory abs with openat2(2), refusing every
// symbolic link on the way (ELOOP).
func openDirNoLinks(abs string) (int, error) {
	return unix.Openat2(unix.AT_FDCWD, abs, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS})
}
