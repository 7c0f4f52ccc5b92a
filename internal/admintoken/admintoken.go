// Package admintoken owns DATA/admin.token, the secret that the admin API's
// mutating endpoints (POST /switchover, POST /maintenance) require as
// "Authorization: Bearer TOKEN".
//
// The file holds one line: 32 random bytes in lower-case hex (64
// characters). The server creates it (mode 0600) on its first start and
// never replaces it: a file that exists but does not hold a token is an
// error naming the file, never silently overwritten.
package admintoken

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FileName is the token's name in the data dir.
const FileName = "admin.token"

// Size is the number of random bytes in a token (hex-encoded: 2*Size chars).
const Size = 32

// maxFile bounds what Read reads: a token file is 65 bytes.
const maxFile = 4096

// Path is the token file of a data dir.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Read reads and checks the token in path. Errors name the file.
func Read(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err // *PathError: names the file
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxFile {
		return "", fmt.Errorf("%s: not a tandem admin token (the file is larger than %d bytes; want one line of %d hex characters)", path, maxFile, 2*Size)
	}
	tok, err := Parse(string(b))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// Parse checks the content of a token file: 64 hex characters, optionally
// followed by one newline.
func Parse(s string) (string, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
	if t == "" {
		return "", fmt.Errorf("empty: not a tandem admin token (want one line of %d hex characters; delete the file to have the server create a new one)", 2*Size)
	}
	if len(t) != 2*Size {
		return "", fmt.Errorf("not a tandem admin token: %d characters, want %d hex characters (delete the file to have the server create a new one)", len(t), 2*Size)
	}
	if _, err := hex.DecodeString(t); err != nil {
		return "", fmt.Errorf("not a tandem admin token: not hex (want %d hex characters; delete the file to have the server create a new one)", 2*Size)
	}
	return strings.ToLower(t), nil
}

// LoadOrCreate returns the token of dataDir, creating DATA/admin.token
// (mode 0600) when it does not exist. An existing file is never replaced:
// garbage in it, or a mode that lets group or others read it, is an error
// naming the file. created reports whether this call wrote the file.
func LoadOrCreate(dataDir string) (tok string, created bool, err error) {
	p := Path(dataDir)
	for attempt := 0; attempt < 3; attempt++ {
		tok, err = readChecked(p)
		if err == nil {
			return tok, false, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", false, err
		}
		tok, err = create(dataDir)
		if err == nil {
			return tok, true, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", false, err
		}
		// Someone else created it between the read and the link: read theirs.
	}
	return "", false, fmt.Errorf("%s: could not read or create the admin token", p)
}

func readChecked(p string) (string, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file (the admin token must be a plain file, mode 0600)", p)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s: mode %04o lets other users read the admin token: chmod 600 %s", p, perm, p)
	}
	return Read(p)
}

// create writes a new token to a temporary file and links it into place,
// so the token file is complete or absent, and an existing one is never
// overwritten (link fails with ErrExist).
func create(dataDir string) (string, error) {
	p := Path(dataDir)
	raw := make([]byte, Size)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("%s: random token: %w", p, err)
	}
	tok := hex.EncodeToString(raw)
	tmp, err := os.CreateTemp(dataDir, "."+FileName+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if _, err := tmp.WriteString(tok + "\n"); err != nil {
		tmp.Close()
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if err := os.Link(tmpName, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", err
		}
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if d, err := os.Open(dataDir); err == nil {
		d.Sync()
		d.Close()
	}
	return tok, nil
}

// Equal compares a presented token with the real one in constant time.
func Equal(presented, tok string) bool {
	if tok == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(presented), []byte(tok)) == 1
}
