package protocol

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
)

// The group key: every server of a group holds one Ed25519 private key and
// signs every message it sends with it (heartbeats, replies, commands, and
// the failover_sig it writes into address.yaml); agents hold only the
// public half, so they can verify a server's word but never mint one.
// Agents' own messages (status reports) are authenticated with the shared
// HMAC secret, when one is set.

// ErrBadKey wraps key-file errors; the message names the file.
var ErrBadKey = errors.New("protocol: bad key file")

const (
	pemPrivate = "PRIVATE KEY" // PKCS #8, as openssl writes it
	pemPublic  = "PUBLIC KEY"  // PKIX
)

// GenerateKey makes a new group key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// EncodePrivateKey is the PEM (PKCS #8) form of k.
func EncodePrivateKey(k ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: der}), nil
}

// EncodePublicKey is the PEM (PKIX) form of k.
func EncodePublicKey(k ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: der}), nil
}

// maxKeyFile bounds what is read of a key file.
const maxKeyFile = 16 << 10

func readKeyFile(path, want string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadKey, path, err)
	}
	defer f.Close()
	b := make([]byte, maxKeyFile+1)
	n, _ := f.Read(b)
	if n > maxKeyFile {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes: expected a PEM %q block from tandem keygen", ErrBadKey, path, maxKeyFile, want)
	}
	blk, _ := pem.Decode(b[:n])
	if blk == nil || blk.Type != want {
		return nil, fmt.Errorf("%w: %s: expected a PEM %q block (written by tandem keygen)", ErrBadKey, path, want)
	}
	return blk.Bytes, nil
}

// LoadPrivateKey reads a group signing key (signing.key).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	der, err := readKeyFile(path, pemPrivate)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadKey, path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s: a %T, expected an Ed25519 key (tandem keygen)", ErrBadKey, path, k)
	}
	return ek, nil
}

// LoadPublicKey reads a group public key (signing.pub). A private key file
// is accepted too (its public half is used).
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	der, err := readKeyFile(path, pemPublic)
	if err != nil {
		if k, perr := LoadPrivateKey(path); perr == nil {
			return k.Public().(ed25519.PublicKey), nil
		}
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadKey, path, err)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s: a %T, expected an Ed25519 key (tandem keygen)", ErrBadKey, path, k)
	}
	return ek, nil
}

// Keys configure a Signer.
type Keys struct {
	// Secret is the shared HMAC secret (agents' messages; and servers'
	// too when no group key is configured, as before the group key).
	Secret []byte
	// Private is the group signing key (servers only).
	Private ed25519.PrivateKey
	// Public verifies server messages; derived from Private when unset.
	Public ed25519.PublicKey
}

// NewGroupSigner is the signer of a server (Private set) or an agent
// (Public set): server messages on every destination but AgentStatus carry
// an Ed25519 signature of the group key; AgentStatus carries the HMAC of
// Secret. Without a group key on either side, server messages fall back to
// the HMAC (or to nothing: the insecure mode).
func NewGroupSigner(dest Destinations, k Keys) *Signer {
	s := &Signer{key: append([]byte(nil), k.Secret...), priv: k.Private, pub: k.Public, agentDest: dest.AgentStatus}
	if s.pub == nil && s.priv != nil {
		s.pub = s.priv.Public().(ed25519.PublicKey)
	}
	return s
}

// Secure reports whether server messages are verified with a group key.
func (s *Signer) Secure() bool { return s != nil && s.pub != nil }

// serverDest reports whether dest carries server messages (group-signed).
func (s *Signer) serverDest(dest string) bool { return s.agentDest != "" && dest != s.agentDest }

func (s *Signer) signGroup(dest string, h map[string]string, body []byte) {
	h[HSignature] = hex.EncodeToString(ed25519.Sign(s.priv, canonical(dest, h, body)))
}

func (s *Signer) verifyGroup(dest string, h map[string]string, body []byte) error {
	sig, ok := h[HSignature]
	if !ok {
		return ErrUnsigned
	}
	b, err := hex.DecodeString(sig)
	if err != nil || len(b) != ed25519.SignatureSize {
		return ErrBadSignature
	}
	msg := canonical(dest, h, body)
	// A fleet of agents shares one message per server (and so one Signer):
	// the verdict of one Ed25519 check (~50-80 µs) is kept for the exact
	// bytes it covered, so N agents cost one check, not N.
	sum := sha256.Sum256(append(msg, b...))
	if s.verified.seen(sum) {
		return nil
	}
	if !ed25519.Verify(s.pub, msg, b) {
		return ErrBadSignature
	}
	s.verified.add(sum)
	return nil
}

// verdicts remembers the digests of messages whose signature verified
// (bounded: cleared when full). Only good verdicts are kept: a bad
// signature is checked again (and refused again) each time.
type verdicts struct {
	mu sync.Mutex
	ok map[[32]byte]struct{}
}

const maxVerdicts = 4096

func (v *verdicts) seen(k [32]byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.ok[k]
	return ok
}

func (v *verdicts) add(k [32]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ok == nil || len(v.ok) >= maxVerdicts {
		v.ok = make(map[[32]byte]struct{}, 256)
	}
	v.ok[k] = struct{}{}
}

// TokenSig is the failover_sig a server writes into address.yaml next to
// the token it binds the agent to: a group signature over failover_id,
// epoch, stomp_interface and stomp_port. "" without a group key.
func (s *Signer) TokenSig(id string, epoch uint64, iface string, port int) string {
	if s == nil || s.priv == nil {
		return ""
	}
	return hex.EncodeToString(ed25519.Sign(s.priv, tokenMessage(id, epoch, iface, port)))
}

// VerifyTokenSig checks a failover_sig. Without a group key to verify with
// it returns ErrUnsigned: nothing is server-signed in the insecure mode.
func (s *Signer) VerifyTokenSig(sig, id string, epoch uint64, iface string, port int) error {
	if !s.Secure() {
		return ErrUnsigned
	}
	if sig == "" {
		return ErrUnsigned
	}
	b, err := hex.DecodeString(sig)
	if err != nil || len(b) != ed25519.SignatureSize {
		return ErrBadSignature
	}
	msg := tokenMessage(id, epoch, iface, port)
	sum := sha256.Sum256(append(msg, b...))
	if s.verified.seen(sum) {
		return nil
	}
	if !ed25519.Verify(s.pub, msg, b) {
		return ErrBadSignature
	}
	s.verified.add(sum)
	return nil
}

func tokenMessage(id string, epoch uint64, iface string, port int) []byte {
	return []byte("tandem-token\x00" + id + "\x00" + strconv.FormatUint(epoch, 10) + "\x00" + iface + "\x00" + strconv.Itoa(port))
}

// canonical is what a signature covers: the destination, tandem's own
// headers (sorted; brokers add transport headers of their own) and the body.
func canonical(dest string, h map[string]string, body []byte) []byte {
	keys := make([]string, 0, len(h))
	for k := range h {
		if signed[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	n := len(dest) + 1 + len(body)
	for _, k := range keys {
		n += len(k) + len(h[k]) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, dest...)
	b = append(b, 0)
	for _, k := range keys {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, h[k]...)
		b = append(b, 0)
	}
	return append(b, body...)
}

func macOf(key []byte, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// ServerLogin is the STOMP login servers present to each other's embedded
// brokers.
const ServerLogin = "tandem-server"

// BrokerPasscode is the passcode that goes with ServerLogin: derived from
// the group key, so every server of a group knows it and nobody else does
// (an agent holds only the public key). "" without a group key.
func (s *Signer) BrokerPasscode() string {
	if s == nil || s.priv == nil {
		return ""
	}
	return hex.EncodeToString(macOf(s.priv.Seed(), []byte("tandem embedded broker passcode v1")))
}
