package failoverid

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// File names inside a server's data dir.
const (
	IDFile    = "failover_id"
	StateFile = "state.json"
)

// Sentinel errors.
var (
	ErrNoID      = errors.New("failoverid: no failover_id file")
	ErrCorruptID = errors.New("failoverid: corrupt failover_id")
	ErrCorrupt   = errors.New("failoverid: corrupt state file")
)

// Token is a server's fencing token: who (ID) and how recent (Epoch).
type Token struct {
	ID    string `json:"failover_id"`
	Epoch uint64 `json:"epoch"`
}

// Compare orders tokens totally: by epoch, and an equal epoch by failover
// id (byte order of the canonical lower-case UUID). It returns -1 if t is
// older than o, +1 if newer, 0 only for the same token. Two servers that
// claimed one epoch without hearing each other (a split at start-up) are
// thereby ordered: the one with the greater id wins and the other, on
// seeing its token, is fenced.
func (t Token) Compare(o Token) int {
	switch {
	case t.Epoch < o.Epoch:
		return -1
	case t.Epoch > o.Epoch:
		return 1
	case t.ID < o.ID:
		return -1
	case t.ID > o.ID:
		return 1
	}
	return 0
}

// Above reports whether t is newer than o (t.Compare(o) > 0).
func (t Token) Above(o Token) bool { return t.Compare(o) > 0 }

// Same reports whether both tokens name the same server at the same epoch.
func (t Token) Same(o Token) bool { return t.ID == o.ID && t.Epoch == o.Epoch }

func (t Token) String() string { return fmt.Sprintf("%s@%d", t.ID, t.Epoch) }

// ParseID checks that s is a UUID in canonical form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, either case) and returns it in lower case.
func ParseID(s string) (string, error) {
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 || u.String() != strings.ToLower(s) {
		return "", fmt.Errorf("expected a UUID like 3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31, got %q", truncate(s, 60))
	}
	return u.String(), nil
}

// LoadID reads DATA/failover_id. A missing file is ErrNoID; an empty or
// malformed one is ErrCorruptID with the file and what was expected.
func LoadID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, IDFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", path, ErrNoID)
	}
	if err != nil {
		return "", err
	}
	line := string(bytes.TrimRight(b, "\r\n"))
	if strings.ContainsAny(line, "\r\n") {
		return "", fmt.Errorf("%s: %w: expected one line holding a UUID, found several lines", path, ErrCorruptID)
	}
	id, err := ParseID(strings.TrimSpace(line))
	if err != nil {
		return "", fmt.Errorf("%s: %w: %v (fix it by hand, restore it from backup, or run `tandem id --regenerate` if this server's identity may change)", path, ErrCorruptID, err)
	}
	return id, nil
}

// LoadOrCreateID returns the server's failover id, creating DATA/failover_id
// (a random UUID, mode 0600, durable) only if the file does not exist. A
// corrupt file is an error, never silently replaced.
func LoadOrCreateID(dataDir string) (id string, created bool, err error) {
	id, err = LoadID(dataDir)
	if err == nil || !errors.Is(err, ErrNoID) {
		return id, false, err
	}
	id, err = writeNewID(dataDir)
	return id, err == nil, err
}

// RegenerateID replaces the failover id with a new random one. Only for an
// explicit operator request (a cloned VM).
func RegenerateID(dataDir string) (string, error) { return writeNewID(dataDir) }

func writeNewID(dataDir string) (string, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	id := uuid.NewString()
	if err := fsutil.WriteFile(filepath.Join(dataDir, IDFile), []byte(id+"\n"), fsutil.Options{Perm: 0o600}); err != nil {
		return "", err
	}
	return id, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
