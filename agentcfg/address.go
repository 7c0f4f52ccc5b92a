package agentcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tandem-ha/tandem/internal/fsutil"
	"gopkg.in/yaml.v3"
)

// DefaultPort is the stomp_port an agent uses when address.yaml has none.
const DefaultPort = 61620

// The keys agentcfg reads and writes. Every other key is left alone.
const (
	KeyStompInterface = "stomp_interface"
	KeyStompPort      = "stomp_port"
	KeyUseSSL         = "use_ssl"
	KeyFailoverID     = "failover_id"
	KeyFailoverEpoch  = "failover_epoch"
	// KeyFailoverSig is a server's signature (group key) over failover_id,
	// failover_epoch, stomp_interface and stomp_port: what makes the token
	// in the file a server's word rather than the file owner's.
	KeyFailoverSig = "failover_sig"
	// KeyFailoverServers lists the group's other servers, "HOST:PORT,HOST:PORT":
	// the agent keeps a standby subscription on each (a new primary reaches
	// it there with a rebind). The agent learns it from its primary's pings
	// (SetFailoverServers); an operator may also write it. The token
	// rewrites (Edit, CompareAndSwap, RewriteAll) never touch it.
	KeyFailoverServers = "failover_servers"
)

var knownKeys = []string{KeyStompInterface, KeyStompPort, KeyUseSSL, KeyFailoverID, KeyFailoverEpoch, KeyFailoverSig, KeyFailoverServers}

// MaxFailoverServers and MaxFailoverServersLen bound failover_servers: at
// most 16 entries and 1 KiB of text.
const (
	MaxFailoverServers    = 16
	MaxFailoverServersLen = 1 << 10
)

// maxSigLen bounds failover_sig (an Ed25519 signature is 128 hex digits).
const maxSigLen = 256

// Sentinel errors. Errors returned by this package wrap one of them (test with
// errors.Is); the message names the key or construct at fault.
var (
	// ErrInvalidValue: a key holds a value of the wrong form (see *ValueError).
	ErrInvalidValue = errors.New("agentcfg: invalid value")
	// ErrRequired: stomp_interface is missing or empty.
	ErrRequired = errors.New("agentcfg: required key missing")
	// ErrSyntax: the file is not valid YAML.
	ErrSyntax = errors.New("agentcfg: YAML syntax error")
	// ErrInvalidUTF8: the file is not valid UTF-8.
	ErrInvalidUTF8 = errors.New("agentcfg: not valid UTF-8")
	// ErrNotMapping: the top level of the document is not a mapping.
	ErrNotMapping = errors.New("agentcfg: top level is not a mapping")
	// ErrMultipleDocuments: the file holds more than one YAML document.
	ErrMultipleDocuments = errors.New("agentcfg: more than one YAML document")
	// ErrDuplicateKey: one of the keys agentcfg owns appears twice.
	ErrDuplicateKey = errors.New("agentcfg: duplicate key")
	// ErrUnsupported: a construct the text editor will not rewrite (anchored,
	// tagged, block or multi-line value of an owned key, a top-level merge
	// key, adding keys to a flow-style mapping).
	ErrUnsupported = errors.New("agentcfg: unsupported construct")
	// ErrBadUpdate: the Update itself is invalid.
	ErrBadUpdate = errors.New("agentcfg: invalid update")
	// ErrSelfCheck: the edited text did not re-parse to the requested values
	// (a bug or an exotic input); nothing is written.
	ErrSelfCheck = errors.New("agentcfg: edit self-check failed")
	// ErrBadPattern: a managed glob is malformed.
	ErrBadPattern = errors.New("agentcfg: malformed glob")
	// ErrMuxClosed: Watch on a closed WatchMux.
	ErrMuxClosed = errors.New("agentcfg: watch multiplexer closed")

	// Agent files are hostile input (see ReadFile). These errors come as a
	// one-line *fsutil.FileError: "PATH: is a named pipe (FIFO), expected a
	// regular file".

	// ErrNotRegular: the file is a FIFO, directory, device, socket or a
	// symbolic link where a regular file was expected (address.yaml or its
	// lock file). Failed.
	ErrNotRegular = fsutil.ErrNotRegular
	// ErrSymlinkEscapes: address.yaml is a symbolic link that leaves its
	// directory (absolute, or climbing above it with ".."). Failed.
	ErrSymlinkEscapes = fsutil.ErrEscapes
	// ErrTooLarge: the file is larger than MaxFileSize
	// (max_agent_file_size). Invalid.
	ErrTooLarge = fsutil.ErrTooLarge
	// ErrLockTimeout: another process held the file's lock for longer than
	// LockTimeout. Failed; retry later.
	ErrLockTimeout = errors.New("lock busy")
)

// ValueError reports a key whose value has the wrong form. Its message reads
// like `stomp_port: expected an integer 1-65535, got "abc"`.
type ValueError struct {
	Key  string
	Want string // the expected form; "" for a missing required key
	Got  string
	Line int // 1-based line of the value, 0 when the key is absent
}

func (e *ValueError) Error() string {
	if e.Want == "" {
		return e.Key + ": required"
	}
	return fmt.Sprintf("%s: expected %s, got %q", e.Key, e.Want, e.Got)
}

// Unwrap makes errors.Is(err, ErrInvalidValue) (or ErrRequired) work.
func (e *ValueError) Unwrap() error {
	if e.Want == "" {
		return ErrRequired
	}
	return ErrInvalidValue
}

const (
	wantHost  = "a host name or IP address"
	wantPort  = "an integer 1-65535"
	wantBool  = "0, 1, true or false"
	wantUUID  = "a canonical UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
	wantEpoch = "an unsigned integer"
	wantScal  = "a scalar"
	wantSrv   = "HOST:PORT,HOST:PORT (at most 16 servers, 1 KiB)"
)

// Address is the typed view of an agent's address.yaml.
type Address struct {
	StompInterface string
	StompPort      int // DefaultPort when absent
	UseSSL         bool
	FailoverID     string // "" when absent; lower case
	FailoverEpoch  uint64 // 0 when absent
	HasEpoch       bool
	// FailoverSig is failover_sig as written ("" when absent). It is not
	// verified here: whoever trusts the token checks it with the group's
	// public key.
	FailoverSig string
	// FailoverServers is failover_servers split into HOST:PORT entries
	// (IPv6 hosts in brackets), in the file's order, without duplicates;
	// nil when absent or empty.
	FailoverServers []string
}

// Equal reports whether a and b hold the same values (Address is not
// comparable with == since it holds a list).
func (a Address) Equal(b Address) bool {
	return a.StompInterface == b.StompInterface && a.StompPort == b.StompPort && a.UseSSL == b.UseSSL &&
		a.FailoverID == b.FailoverID && a.FailoverEpoch == b.FailoverEpoch && a.HasEpoch == b.HasEpoch &&
		a.FailoverSig == b.FailoverSig && slices.Equal(a.FailoverServers, b.FailoverServers)
}

// Parse validates an address.yaml and returns its typed view. A missing
// stomp_interface (also in an empty file) is `stomp_interface: required`;
// a bad value is a *ValueError naming the key and the expected form. A key
// agentcfg owns may appear only once (ErrDuplicateKey): yaml.v3's node API
// would silently keep both, and picking one for a fencing key is not safe.
// Duplicates of other keys are not agentcfg's business and are kept as they are.
func Parse(data []byte) (Address, error) {
	d, err := load(data)
	if err != nil {
		return Address{}, err
	}
	return d.address()
}

// ReadOptions tune ReadFileWith.
type ReadOptions struct {
	// MaxFileSize is the largest file read, in bytes (max_agent_file_size);
	// 0 means DefaultMaxFileSize. A larger file is ErrTooLarge.
	MaxFileSize int64
}

// ReadFile reads and parses path. Errors are prefixed with the path. It is
// ReadFileWith with default options.
func ReadFile(path string) (Address, error) {
	return ReadFileWith(path, ReadOptions{})
}

// ReadFileWith reads and parses path as hostile input: the file's
// directory is opened as a handle and the file is opened beneath it
// without following a symbolic link out of it (a link is followed only while
// it stays beneath the directory, else ErrSymlinkEscapes), without blocking
// on a FIFO, as a regular file only (ErrNotRegular) and at most
// opt.MaxFileSize bytes (ErrTooLarge, before anything is parsed). Errors are
// one line and name the file.
func ReadFileWith(path string, opt ReadOptions) (Address, error) {
	data, _, err := readAgentFile(path, opt.MaxFileSize)
	if err != nil {
		return Address{}, err // names the path already
	}
	d, err := loadBounded(data)
	var a Address
	if err == nil {
		a, err = d.address()
	}
	if err != nil {
		return Address{}, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// pair is one top-level mapping entry.
type pair struct{ key, val *yaml.Node }

// doc is a loaded address.yaml: the bytes, the top-level mapping (nil when the
// document is empty or only comments) and the owned keys found in it.
type doc struct {
	data  []byte
	root  *yaml.Node
	pairs []pair
	known map[string]pair
	// parse, when set, parses other content the way this doc was parsed
	// (through a Flusher's cache): the self-check of an edit uses it.
	parse func([]byte) (*doc, error)
}

// reparse parses out, an edit of d, for its self-check.
func (d *doc) reparse(out []byte) (*doc, error) {
	if d.parse != nil {
		return d.parse(out)
	}
	return load(out)
}

var bom = []byte{0xEF, 0xBB, 0xBF}

func load(data []byte) (*doc, error) {
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, w := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && w <= 1 {
				break
			}
			off += w
		}
		return nil, fmt.Errorf("%w (first bad byte at offset %d)", ErrInvalidUTF8, off)
	}
	d := &doc{data: data, known: map[string]pair{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var n yaml.Node
	if err := dec.Decode(&n); err != nil {
		if errors.Is(err, io.EOF) {
			return d, nil // empty or only comments
		}
		return nil, fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return nil, fmt.Errorf("%w (second document at line %d)", ErrMultipleDocuments, next.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) != 1 {
		return d, nil
	}
	root := n.Content[0]
	switch {
	case root.Kind == yaml.MappingNode:
	case root.Kind == yaml.ScalarNode && root.Tag == "!!null" && root.Value == "" && root.Anchor == "":
		return d, nil // "---" alone: an empty document
	default:
		return nil, fmt.Errorf("%w (line %d holds a %s)", ErrNotMapping, root.Line, kindName(root))
	}
	d.root = root
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		d.pairs = append(d.pairs, pair{k, v})
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if k.Tag == "!!merge" {
			return nil, fmt.Errorf("%w: top-level merge key %q at line %d", ErrUnsupported, k.Value, k.Line)
		}
		if !isKnown(k.Value) {
			continue
		}
		if prev, ok := d.known[k.Value]; ok {
			return nil, fmt.Errorf("%w: %s (lines %d and %d)", ErrDuplicateKey, k.Value, prev.key.Line, k.Line)
		}
		d.known[k.Value] = pair{k, v}
	}
	return d, nil
}

func isKnown(k string) bool {
	for _, s := range knownKeys {
		if s == k {
			return true
		}
	}
	return false
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "sequence"
	case yaml.AliasNode:
		return "alias"
	case yaml.ScalarNode:
		return "scalar"
	}
	return "document"
}

// scalar returns the value of an owned key: ok=false when the key is absent
// or null.
func (d *doc) scalar(key string) (val string, line int, ok bool, err error) {
	p, found := d.known[key]
	if !found {
		return "", 0, false, nil
	}
	v := p.val
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind != yaml.ScalarNode {
		return "", p.val.Line, false, &ValueError{Key: key, Want: wantScal, Got: kindName(v), Line: p.val.Line}
	}
	if v.Tag == "!!null" {
		return "", p.val.Line, false, nil
	}
	return v.Value, p.val.Line, true, nil
}

func (d *doc) address() (Address, error) {
	a := Address{StompPort: DefaultPort}
	v, line, ok, err := d.scalar(KeyStompInterface)
	if err != nil {
		return Address{}, err
	}
	if !ok || v == "" {
		return Address{}, &ValueError{Key: KeyStompInterface, Line: line}
	}
	if !validHost(v) {
		return Address{}, &ValueError{Key: KeyStompInterface, Want: wantHost, Got: v, Line: line}
	}
	a.StompInterface = v

	if v, line, ok, err = d.scalar(KeyStompPort); err != nil {
		return Address{}, err
	} else if ok {
		p, okp := parsePort(v)
		if !okp {
			return Address{}, &ValueError{Key: KeyStompPort, Want: wantPort, Got: v, Line: line}
		}
		a.StompPort = p
	}

	if v, line, ok, err = d.scalar(KeyUseSSL); err != nil {
		return Address{}, err
	} else if ok {
		b, okb := parseBool(v)
		if !okb {
			return Address{}, &ValueError{Key: KeyUseSSL, Want: wantBool, Got: v, Line: line}
		}
		a.UseSSL = b
	}

	if v, line, ok, err = d.scalar(KeyFailoverID); err != nil {
		return Address{}, err
	} else if ok {
		id, oku := parseUUID(v)
		if !oku {
			return Address{}, &ValueError{Key: KeyFailoverID, Want: wantUUID, Got: v, Line: line}
		}
		a.FailoverID = id
	}

	if v, line, ok, err = d.scalar(KeyFailoverEpoch); err != nil {
		return Address{}, err
	} else if ok {
		e, oke := parseEpoch(v)
		if !oke {
			return Address{}, &ValueError{Key: KeyFailoverEpoch, Want: wantEpoch, Got: v, Line: line}
		}
		a.FailoverEpoch, a.HasEpoch = e, true
	}

	if v, line, ok, err = d.scalar(KeyFailoverSig); err != nil {
		return Address{}, err
	} else if ok {
		if len(v) > maxSigLen || strings.IndexFunc(v, func(r rune) bool { return !isHexDigit(r) }) >= 0 {
			return Address{}, &ValueError{Key: KeyFailoverSig, Want: "hex digits (written by a tandem server)", Got: v, Line: line}
		}
		a.FailoverSig = v
	}

	if v, line, ok, err = d.scalar(KeyFailoverServers); err != nil {
		return Address{}, err
	} else if ok {
		list, err := ParseFailoverServers(v)
		if err != nil {
			return Address{}, &ValueError{Key: KeyFailoverServers, Want: wantSrv, Got: v, Line: line}
		}
		a.FailoverServers = list
	}
	return a, nil
}

// ParseFailoverServers parses a failover_servers value (also the
// failover-servers header of a ping): HOST:PORT entries separated by commas,
// blanks around an entry ignored, IPv6 hosts in brackets. Each host is a
// host name or IP address and each port 1-65535; at most
// MaxFailoverServers entries and MaxFailoverServersLen bytes. Duplicates are
// dropped (the first is kept). "" is no servers (nil). Errors wrap
// ErrInvalidValue.
func ParseFailoverServers(s string) ([]string, error) {
	if len(s) > MaxFailoverServersLen {
		return nil, fmt.Errorf("%w: %s: longer than %d bytes", ErrInvalidValue, KeyFailoverServers, MaxFailoverServersLen)
	}
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.Trim(e, " \t")
		host, port, err := net.SplitHostPort(e)
		if err != nil || !validHost(host) {
			return nil, fmt.Errorf("%w: %s: %q: expected HOST:PORT", ErrInvalidValue, KeyFailoverServers, e)
		}
		p, ok := parsePort(port)
		if !ok {
			return nil, fmt.Errorf("%w: %s: %q: expected a port 1-65535", ErrInvalidValue, KeyFailoverServers, e)
		}
		hp := net.JoinHostPort(host, strconv.Itoa(p))
		if slices.Contains(out, hp) {
			continue
		}
		if len(out) == MaxFailoverServers {
			return nil, fmt.Errorf("%w: %s: more than %d servers", ErrInvalidValue, KeyFailoverServers, MaxFailoverServers)
		}
		out = append(out, hp)
	}
	return out, nil
}

// FormatFailoverServers is the failover_servers value for a list
// (comma-separated, as ParseFailoverServers reads it).
func FormatFailoverServers(list []string) string { return strings.Join(list, ",") }

func isHexDigit(r rune) bool {
	return ('0' <= r && r <= '9') || ('a' <= r && r <= 'f') || ('A' <= r && r <= 'F')
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func parsePort(s string) (int, bool) {
	if !allDigits(s) || len(s) > 5 {
		return 0, false
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, false
	}
	return p, true
}

func parseEpoch(s string) (uint64, bool) {
	if !allDigits(s) {
		return 0, false
	}
	e, err := strconv.ParseUint(s, 10, 64)
	return e, err == nil
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "1", "true":
		return true, true
	case "0", "false":
		return false, true
	}
	return false, false
}

// parseUUID accepts the canonical 8-4-4-4-12 hex form (either case) and
// returns it in lower case.
func parseUUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return "", false
			}
		}
	}
	return strings.ToLower(s), true
}

// validHost accepts an IP address (v4 or v6) or a DNS-style host name:
// letters, digits, '-', '_' and '.', at most 253 bytes.
func validHost(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return s[0] != '-' && s[0] != '.'
}
