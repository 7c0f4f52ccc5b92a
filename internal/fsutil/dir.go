package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Files in directories that other users may write (agents' conf
// directories) are hostile input: their owner can replace any name in them
// at any moment with a symbolic link, a FIFO, a directory or a huge file, and
// can swap the directory itself between two system calls. Dir works on such
// files through a directory handle: every open, create, rename and unlink is
// relative to the handle (so swapping the directory's path changes nothing),
// never follows a symbolic link in the last component (O_NOFOLLOW), never
// blocks on a FIFO (O_NONBLOCK), accepts regular files only (checked with
// fstat after the open), and gives a new file away only to the owner the old
// file had when that owner also owns the directory.

// Sentinel errors of Dir (test with errors.Is; the message is a *FileError's).
var (
	// ErrNotRegular: the name is a FIFO, directory, device, socket or
	// symbolic link where a regular file was expected.
	ErrNotRegular = errors.New("not a regular file")
	// ErrEscapes: a symbolic link points outside the directory.
	ErrEscapes = errors.New("symlink leaves the directory")
	// ErrTooLarge: the file exceeds the caller's size limit.
	ErrTooLarge = errors.New("file too large")
)

// FileError is a file that is not what was expected. Its message is one
// line naming the file: "PATH: PROBLEM".
type FileError struct {
	Path    string
	Problem string // e.g. "is a named pipe (FIFO), expected a regular file"
	Err     error  // ErrNotRegular, ErrEscapes or ErrTooLarge
}

func (e *FileError) Error() string { return e.Path + ": " + e.Problem }

// Unwrap returns the sentinel.
func (e *FileError) Unwrap() error { return e.Err }

// Dir is an open directory handle.
type Dir struct {
	fd   int
	path string // for messages and Staged's paths
	uid  uint32 // the directory's owner
	dev  uint64
}

// OpenDir opens the directory path. The path itself is resolved by the
// kernel (it is the caller's name for the directory); everything Dir does
// afterwards is relative to the handle.
func OpenDir(path string) (*Dir, error) {
	fd, err := openat(unix.AT_FDCWD, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return newDir(fd, path)
}

func newDir(fd int, path string) (*Dir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return &Dir{fd: fd, path: path, uid: st.Uid, dev: uint64(st.Dev)}, nil
}

// Close releases the handle.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Path is the directory's path (for messages).
func (d *Dir) Path() string { return d.path }

// Dev is the device of the file system holding the directory.
func (d *Dir) Dev() uint64 { return d.dev }

// Join is the path of name in d (for messages).
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

// Sync fsyncs the directory: renames and creations in it become durable.
func (d *Dir) Sync() error {
	if err := unix.Fsync(d.fd); err != nil {
		return fmt.Errorf("fsync dir %s: %w", d.path, err)
	}
	return nil
}

// OpenFS opens the file system holding d for syncfs(2), through the handle.
func (d *Dir) OpenFS() (*FS, error) {
	fd, err := unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "dup", Path: d.path, Err: err}
	}
	return &FS{os.NewFile(uintptr(fd), d.path)}, nil
}

// maxLinks bounds the symbolic links Resolve follows (as the kernel does).
const maxLinks = 40

// Resolve finds the file that name (a relative path, normally one name)
// denotes beneath d. It follows symbolic links only while they stay beneath
// d: an absolute link, or one whose ".." climbs above d, is refused with
// ErrEscapes. Every step is an openat/fstatat relative to a handle it holds
// with O_NOFOLLOW, so a link swapped in mid-walk is not followed either. It
// returns a new handle on the directory holding the file (close it) and the
// file's name in it. The file must exist (else a *fs.PathError wrapping
// fs.ErrNotExist); it is not opened, so what it is is checked by the open.
func (d *Dir) Resolve(name string) (*Dir, string, error) {
	type level struct {
		fd   int
		name string
	}
	var stack []level // open subdirectories beneath d, innermost last
	closeAll := func() {
		for _, l := range stack {
			unix.Close(l.fd)
		}
	}
	cur := func() int {
		if len(stack) == 0 {
			return d.fd
		}
		return stack[len(stack)-1].fd
	}
	where := func(last string) string {
		p := d.path
		for _, l := range stack {
			p = filepath.Join(p, l.name)
		}
		return filepath.Join(p, last)
	}
	escape := func(at, link string) error {
		closeAll()
		return &FileError{Path: at, Err: ErrEscapes,
			Problem: fmt.Sprintf("symlink leaves the agent directory %s (it points to %q); expected a regular file or a relative link beneath it", d.path, link)}
	}
	if filepath.IsAbs(name) {
		return nil, "", escape(name, name)
	}
	pending := split(name)
	links := 0
	viaAt, via := d.Join(name), name // the last link followed, for messages
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		if c == ".." {
			if len(stack) == 0 {
				return nil, "", escape(viaAt, via)
			}
			unix.Close(stack[len(stack)-1].fd)
			stack = stack[:len(stack)-1]
			continue
		}
		last := len(pending) == 0
		var st unix.Stat_t
		if err := fstatat(cur(), c, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			closeAll()
			return nil, "", &fs.PathError{Op: "stat", Path: where(c), Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if links++; links > maxLinks {
				closeAll()
				return nil, "", &fs.PathError{Op: "resolve", Path: d.Join(name), Err: unix.ELOOP}
			}
			at := where(c)
			link, err := readlinkat(cur(), c)
			if err != nil {
				closeAll()
				return nil, "", &fs.PathError{Op: "readlink", Path: at, Err: err}
			}
			if filepath.IsAbs(link) {
				return nil, "", escape(at, link)
			}
			// Climbing above d is caught by the ".." case, which names the
			// last link followed.
			lp := split(link)
			viaAt, via = at, link
			pending = append(lp, pending...)
			continue
		}
		if last {
			fd := cur()
			path := where("")
			if len(stack) > 0 {
				stack = stack[:len(stack)-1] // hand the innermost handle over
			} else {
				var err error
				if fd, err = unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
					return nil, "", &fs.PathError{Op: "dup", Path: d.path, Err: err}
				}
			}
			closeAll()
			nd, err := newDir(fd, filepath.Clean(path))
			if err != nil {
				return nil, "", err
			}
			return nd, c, nil
		}
		fd, err := openat(cur(), c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ELOOP && links < maxLinks {
			pending = append([]string{c}, pending...) // became a link after the stat: resolve it
			links++
			continue
		}
		if err != nil {
			closeAll()
			return nil, "", &fs.PathError{Op: "open", Path: where(c), Err: err}
		}
		stack = append(stack, level{fd, c})
	}
	closeAll()
	return nil, "", &FileError{Path: d.Join(name), Problem: "is a directory, expected a regular file", Err: ErrNotRegular}
}

// split cuts a relative path into its names, dropping "" and ".".
func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// kind names what a non-regular file is, for messages.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a named pipe (FIFO)"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return "not a regular file"
}

func notRegular(path string, mode uint32, what string) error {
	return &FileError{Path: path, Problem: "is " + kind(mode) + ", expected " + what, Err: ErrNotRegular}
}

// OpenRegular opens name in d read-only without following a symbolic link
// and without blocking (a FIFO), and returns the descriptor and its fstat
// once it is known to be a regular file.
func (d *Dir) OpenRegular(name string) (int, *unix.Stat_t, error) {
	fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err == unix.ELOOP {
		return -1, nil, notRegular(d.Join(name), unix.S_IFLNK, "a regular file")
	}
	if err != nil {
		return -1, nil, &fs.PathError{Op: "open", Path: d.Join(name), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "stat", Path: d.Join(name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, nil, notRegular(d.Join(name), uint32(st.Mode), "a regular file")
	}
	return fd, &st, nil
}

// ReadRegular reads the regular file name in d (see OpenRegular), at most
// max bytes: a larger file is ErrTooLarge, found by fstat before reading or,
// for a file that grows meanwhile, after reading max+1 bytes.
func (d *Dir) ReadRegular(name string, max int64) ([]byte, *unix.Stat_t, error) {
	fd, st, err := d.OpenRegular(name)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(fd)
	tooLarge := func(size string) error {
		return &FileError{Path: d.Join(name), Err: ErrTooLarge,
			Problem: fmt.Sprintf("is %s bytes, expected at most %d", size, max)}
	}
	if st.Size > max {
		return nil, nil, tooLarge(strconv.FormatInt(st.Size, 10))
	}
	buf := make([]byte, 0, st.Size+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):min(cap(buf), int(max)+1)])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return nil, nil, &fs.PathError{Op: "read", Path: d.Join(name), Err: err}
		}
		if n == 0 {
			return buf, st, nil
		}
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return nil, nil, tooLarge("more than " + strconv.FormatInt(max, 10))
		}
	}
}

// OpenLock opens the lock file name in d, creating it if missing: created
// with O_CREAT|O_EXCL|O_NOFOLLOW (never at a symbolic link's target), or an
// existing one opened with O_NOFOLLOW|O_NONBLOCK and accepted only if it is
// a regular file. Read-write when possible, else read-only (flock works on
// either). The caller closes the descriptor.
func (d *Dir) OpenLock(name string) (int, error) {
	const common = unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	fd, err := openat(d.fd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|common, 0o644)
	if err == unix.EEXIST || err == unix.EACCES || err == unix.EROFS {
		fd, err = openat(d.fd, name, unix.O_RDWR|common, 0)
		if err == unix.EACCES || err == unix.EROFS {
			fd, err = openat(d.fd, name, unix.O_RDONLY|common, 0)
		}
	}
	if err == unix.ELOOP {
		return -1, notRegular(d.Join(name), unix.S_IFLNK, "a regular lock file")
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: d.Join(name), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "stat", Path: d.Join(name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, notRegular(d.Join(name), uint32(st.Mode), "a regular lock file")
	}
	return fd, nil
}

// Stage writes data to a new temporary file in d, to be renamed over name by
// Commit. The temporary file is created with O_EXCL|O_NOFOLLOW. Given old
// (the fstat of the file being replaced), it gets old's mode, and old's
// owner and group only when old's owner also owns d; otherwise it keeps the
// writer's own (no chown): a file another user planted, or hard-linked, in a
// directory it does not own is not given to anyone. Without old it gets
// opt.Perm (default 0644). d must stay open until Commit or Abort.
func (d *Dir) Stage(name string, data []byte, old *unix.Stat_t, opt Options) (*Staged, error) {
	perm := uint32(opt.Perm.Perm())
	if perm == 0 {
		perm = 0o644
	}
	uid, gid := -1, -1
	if old != nil {
		perm = uint32(old.Mode) & 0o777
		if old.Uid == d.uid {
			uid, gid = int(old.Uid), int(old.Gid)
		}
	}
	s := &Staged{Target: d.Join(name), Dir: d.path, d: d, name: name}
	var fd int
	var err error
	for try := 0; ; try++ {
		s.temp = TempPrefix + name + ".tmp-" + strconv.FormatUint(rand.Uint64()%1e10, 10)
		fd, err = openat(d.fd, s.temp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err == unix.EEXIST && try < 100 {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: d.Join(s.temp), Err: err}
		}
		break
	}
	s.Temp = d.Join(s.temp)
	fail := func(err error) (*Staged, error) {
		unix.Close(fd)
		unix.Unlinkat(d.fd, s.temp, 0)
		return nil, err
	}
	for b := data; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("write %s: %w", s.Temp, err))
		}
		b = b[n:]
	}
	// The umask may have narrowed the mode given to open.
	if err := unix.Fchmod(fd, perm); err != nil {
		return fail(&fs.PathError{Op: "chmod", Path: s.Temp, Err: err})
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		_ = unix.Fchown(fd, uid, gid) // best effort: only root may give a file away
	}
	if !opt.NoSync {
		if err := unix.Fsync(fd); err != nil {
			return fail(fmt.Errorf("fsync %s: %w", s.Temp, err))
		}
	}
	f := os.NewFile(uintptr(fd), s.Temp) // takes fd over
	s.Info, _ = f.Stat()                 // nil on error: no identity
	if err := f.Close(); err != nil {
		unix.Unlinkat(d.fd, s.temp, 0)
		return nil, &fs.PathError{Op: "close", Path: s.Temp, Err: err}
	}
	return s, nil
}

func openat(dir int, name string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dir, name, flags, perm)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func fstatat(dir int, name string, st *unix.Stat_t, flags int) error {
	for {
		err := unix.Fstatat(dir, name, st, flags)
		if err != unix.EINTR {
			return err
		}
	}
}

func readlinkat(dir int, name string) (string, error) {
	for n := 256; n <= 1<<16; n *= 4 {
		buf := make([]byte, n)
		m, err := unix.Readlinkat(dir, name, buf)
		if err == unix.EINTR {
			n /= 4
			continue
		}
		if err != nil {
			return "", err
		}
		if m < n {
			return string(buf[:m]), nil
		}
	}
	return "", unix.ENAMETOOLONG
}

// ErrUntrustedLink: a directory on the way is a symbolic link in a directory
// that users other than root and this process's may write.
var ErrUntrustedLink = errors.New("symlink in a directory other users may write")

// OpenDirTrusted opens the directory path like OpenDir, but walks it from
// the root one name at a time with O_NOFOLLOW, and follows a symbolic link
// only when the directory holding it is owned by root or by this process's
// user and is not group- or world-writable: a link the operator's layout
// made is followed, one that an agent's owner planted in place of its conf
// directory (to point tandem at /etc) is refused with ErrUntrustedLink.
// Directories themselves may be owned by anyone: the handle pins them, so
// swapping one afterwards changes nothing.
func OpenDirTrusted(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	// No link on the way (the usual layout): one openat2(2) that refuses
	// every symbolic link is the walk done by the kernel. A link (ELOOP),
	// any other error, or a kernel without openat2 (before Linux 5.6) takes
	// the walk, which judges each link and names what failed. A fleet opens
	// its agents' directories this way for every rewrite.
	if fd, err := openDirNoLinks(abs); err == nil {
		return newDir(fd, abs)
	}
	euid := uint32(os.Geteuid())
	rootFd, err := openat(unix.AT_FDCWD, "/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: err}
	}
	type level struct {
		fd   int
		name string
	}
	stack := []level{{rootFd, "/"}}
	closeAll := func() {
		for _, l := range stack {
			unix.Close(l.fd)
		}
	}
	where := func(c string) string {
		p := "/"
		for _, l := range stack[1:] {
			p = filepath.Join(p, l.name)
		}
		return filepath.Join(p, c)
	}
	pending := split(abs)
	links := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		if c == ".." {
			if len(stack) > 1 {
				unix.Close(stack[len(stack)-1].fd)
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1].fd
		fd, err := openat(cur, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ELOOP || err == unix.ENOTDIR {
			var st unix.Stat_t
			if fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				at := where(c)
				var dst unix.Stat_t
				if err := unix.Fstat(cur, &dst); err != nil {
					closeAll()
					return nil, &fs.PathError{Op: "stat", Path: where(""), Err: err}
				}
				if dst.Uid != 0 && dst.Uid != euid || dst.Mode&0o022 != 0 {
					closeAll()
					return nil, &FileError{Path: at, Err: ErrUntrustedLink,
						Problem: fmt.Sprintf("is a symbolic link in %s, which other users may write (owner uid %d, mode %#o); expected a directory, or a link only root can change",
							where(""), dst.Uid, uint32(dst.Mode)&0o7777)}
				}
				if links++; links > maxLinks {
					closeAll()
					return nil, &fs.PathError{Op: "open", Path: abs, Err: unix.ELOOP}
				}
				link, err := readlinkat(cur, c)
				if err != nil {
					closeAll()
					return nil, &fs.PathError{Op: "readlink", Path: at, Err: err}
				}
				if filepath.IsAbs(link) {
					for _, l := range stack[1:] {
						unix.Close(l.fd)
					}
					stack = stack[:1]
				}
				pending = append(split(link), pending...)
				continue
			}
		}
		if err != nil {
			closeAll()
			return nil, &fs.PathError{Op: "open", Path: where(c), Err: err}
		}
		stack = append(stack, level{fd, c})
	}
	top := stack[len(stack)-1]
	stack = stack[:len(stack)-1]
	closeAll()
	return newDir(top.fd, abs)
}
