package failoverid

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockFile is the data dir's lock: a running server holds an exclusive
// flock on it, so a second server on the same data dir refuses to start and
// the offline commands (rejoin, id --regenerate) can tell that a server is
// running even when its admin API does not answer.
const LockFile = ".lock"

// ErrLocked: another process holds the data dir.
var ErrLocked = errors.New("failoverid: data dir in use by another tandem server")

// Lock takes the data dir's lock without waiting. The returned function
// releases it. The lock goes away with the process, however it ends.
func Lock(dataDir string) (unlock func(), err error) {
	path := filepath.Join(dataDir, LockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dataDir, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// Locked reports whether a running server holds the data dir.
func Locked(dataDir string) bool {
	unlock, err := Lock(dataDir)
	if err != nil {
		return errors.Is(err, ErrLocked)
	}
	unlock()
	return false
}
