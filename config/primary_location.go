package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// Files of the data directory that name the primary.
const (
	// PrimaryLocationFile holds one line HOST or HOST:PORT; present means
	// this server is a backup of that primary.
	PrimaryLocationFile = "primary_location"
	// PrimaryLocationDormantFile is what a takeover renames it to.
	PrimaryLocationDormantFile = "primary_location.dormant"
)

const primaryLocationForm = "one line HOST or HOST:PORT (port default 61620; IPv6 as [::1]:61620)"

// ParsePrimaryLocation parses HOST or HOST:PORT (port default DefaultPort);
// an IPv6 address is written [::1] or [::1]:61620 (a bare ::1 is accepted
// too, without a port). Surrounding white space is ignored. The host must be
// one agents and the backup can reach: not empty, not 0.0.0.0 or ::.
func ParsePrimaryLocation(s string) (host string, port int, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", 0, fmt.Errorf("empty: expected %s", primaryLocationForm)
	}
	host, port, err = splitHostPort(s, true, DefaultPort)
	var fe *formError
	if errors.As(err, &fe) {
		return "", 0, fmt.Errorf("%q: expected %s", s, primaryLocationForm)
	}
	if err != nil {
		return "", 0, fmt.Errorf("%v: expected %s", err, primaryLocationForm)
	}
	if port == 0 {
		return "", 0, fmt.Errorf("%q: port 0 is not a port to connect to: expected %s", s, primaryLocationForm)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return "", 0, fmt.Errorf("%q: %s is not an address to connect to: expected %s", s, host, primaryLocationForm)
		}
	} else if !validHostname(host) {
		return "", 0, fmt.Errorf("%q: %q is not a host name or IP address: expected %s", s, host, primaryLocationForm)
	}
	return host, port, nil
}

// validHostname accepts DNS names (letters, digits, '-', '_', '.').
func validHostname(h string) bool {
	if h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasPrefix(h, "-") || strings.Contains(h, "..") {
		return false
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// NormalizePrimaryLocation parses s like ParsePrimaryLocation and returns it
// as HOST:PORT ([v6]:PORT for IPv6).
func NormalizePrimaryLocation(s string) (string, error) {
	host, port, err := ParsePrimaryLocation(s)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// ReadPrimaryLocation reads DATA/primary_location. present is false (and err
// nil) when the file does not exist: this server is not a backup. hostport
// is HOST:PORT with the default port applied. A malformed file is an error
// naming the file and the expected form, wrapping ErrInvalid.
func ReadPrimaryLocation(dataDir string) (hostport string, present bool, err error) {
	path := filepath.Join(dataDir, PrimaryLocationFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", true, err
	}
	bad := func(format string, args ...interface{}) (string, bool, error) {
		return "", true, &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	text := strings.TrimRight(string(b), "\r\n\t ")
	if strings.TrimSpace(text) == "" {
		return bad("empty file: expected %s (remove the file to start as a primary)", primaryLocationForm)
	}
	if strings.ContainsAny(text, "\r\n") {
		return bad("several lines: expected %s", primaryLocationForm)
	}
	hp, err := NormalizePrimaryLocation(text)
	if err != nil {
		return bad("%v", err)
	}
	return hp, true, nil
}

// WritePrimaryLocation validates hostport (HOST or HOST:PORT) and writes it,
// normalised to HOST:PORT, to DATA/primary_location atomically and durably,
// creating the data directory (0700) if needed.
func WritePrimaryLocation(dataDir, hostport string) error {
	hp, err := NormalizePrimaryLocation(hostport)
	if err != nil {
		return &Error{Msg: "primary location " + err.Error()}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	return fsutil.WriteFile(filepath.Join(dataDir, PrimaryLocationFile), []byte(hp+"\n"), fsutil.Options{Perm: 0o640})
}
