// Package protocol defines what tandem servers and agents say to each other
// over STOMP: the four destinations, the headers every message carries, and
// HMAC-SHA256 signing.
//
// Every message carries tandem-version, failover-id, epoch and node.
// Heartbeats add seq, advertise (the host:port agents should use), period-ms
// and role; a heartbeat that hands the primary role to a backup names it in
// handover-to. With a shared secret, a signature header holds the hex
// HMAC-SHA256 of the destination, tandem's own headers (sorted) and the body;
// receivers drop unsigned or badly signed messages.
package protocol

import (
	"crypto/ed25519"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/tandem-ha/tandem/internal/version"
)

// DefaultPrefix is prepended to every destination name.
const DefaultPrefix = "/topic/tandem."

// Header names.
const (
	HVersion     = "tandem-version"
	HFailoverID  = "failover-id"
	HEpoch       = "epoch"
	HNode        = "node"
	HSeq         = "seq"
	HAdvertise   = "advertise"
	HPeriodMS    = "period-ms"
	HRole        = "role"
	HSentMS      = "sent-ms" // wall clock, informational only
	HHandoverTo  = "handover-to"
	HMaintenance = "maintenance"
	HInstance    = "instance"   // random per process start: tells clones apart
	HStartedMS   = "started-ms" // when that process started (wall clock, ms)
	HSignature   = "signature"
	// HNonce: a backup's reply carries a fresh random nonce; HEcho: the
	// primary's heartbeats echo the nonces it heard last (comma-separated),
	// so a backup counts only heartbeats sent after its own reply — a
	// recorded stream replayed later echoes nothing it issued.
	HNonce = "nonce"
	HEcho  = "echo"
	// HFailoverSig and HBound: an agent's status forwards the failover_sig
	// of its address.yaml and the stomp_interface:stomp_port it covers, so
	// the token it reports is a server's signed word, not the agent's.
	HFailoverSig = "failover-sig"
	HBound       = "bound-address"
	// HStopping: a backup's last reply on a clean stop, so the primary
	// knows at once that no backup watches it.
	HStopping = "stopping"
	// HCommand names an agent command's kind: absent for the periodic
	// ping, CommandRebind for a rebind (the primary tells agents on their
	// own hosts to rewrite their address.yaml to advertise, at its token,
	// with the failover-sig it carries).
	HCommand = "command"
	// HFailoverServers (pings): the group's other servers' advertise
	// addresses, "HOST:PORT,HOST:PORT"; an agent keeps them as
	// failover_servers and holds a standby subscription on each.
	HFailoverServers = "failover-servers"
	// Groups: HPriority and HEffective are the sender's configured and
	// effective priority (heartbeats and replies); HHeardSeq (replies) is
	// the seq of the last heartbeat the backup counted from its primary,
	// the election's tie-break; HPreempt (replies) asks the primary for a
	// switchover to this backup (preempt: true).
	// (Not "priority": brokers own that STOMP header — ActiveMQ's JMS
	// priority — and strip or rewrite it.)
	HPriority  = "group-priority"
	HEffective = "group-effective-priority"
	HHeardSeq  = "heard-seq"
	HPreempt   = "preempt"
)

// MaxPriority is the highest priority a server may have.
const MaxPriority = 255

// DefaultPriority is the priority of a server that does not say its own
// (an older version, or priority not set).
const DefaultPriority = 100

// HRosterPart: "i/n", part i of n of one roster message (its seq).
const HRosterPart = "roster-part"

// CommandRebind is the HCommand of a rebind.
const CommandRebind = "rebind"

// Sentinel errors.
var (
	ErrMissingHeader = errors.New("protocol: missing header")
	ErrBadHeader     = errors.New("protocol: bad header")
	ErrUnsigned      = errors.New("protocol: unsigned message")
	ErrBadSignature  = errors.New("protocol: bad signature")
)

// Destinations names the channels.
type Destinations struct {
	Heartbeat, Reply, AgentStatus, AgentCommand string
	// Roster carries the primary's roster of agents to its backups.
	Roster string
}

// NewDestinations derives the destinations from a prefix ("" = DefaultPrefix).
func NewDestinations(prefix string) Destinations {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Destinations{
		Heartbeat:    prefix + "heartbeat",
		Reply:        prefix + "heartbeat-reply",
		AgentStatus:  prefix + "agent-status",
		AgentCommand: prefix + "agent-command",
		Roster:       prefix + "roster",
	}
}

// Envelope is the decoded header set of a tandem message.
type Envelope struct {
	Version    string
	FailoverID string
	Epoch      uint64
	Node       string
	// Heartbeat and reply fields; zero when absent.
	Seq         uint64
	Advertise   string
	PeriodMS    int64
	Role        string
	SentMS      int64
	HandoverTo  string
	Maintenance bool
	// Instance and StartedMS identify the sending process, so that two
	// servers sharing a failover id (a cloned VM) can be told apart.
	Instance  string
	StartedMS int64
	// Nonce (replies) and Echo (heartbeats): see HNonce.
	Nonce string
	Echo  []string
	// FailoverSig and Bound (agent status): see HFailoverSig.
	FailoverSig string
	Bound       string
	// Stopping (replies): see HStopping.
	Stopping bool
	// Command and FailoverServers (agent commands): see HCommand.
	Command         string
	FailoverServers []string
	// Priority and Effective (heartbeats, replies) are sent and were
	// received only with HasPriority (absent: an older server, taken as
	// DefaultPriority by PriorityOf); HeardSeq and Preempt (replies): see
	// HPriority.
	HasPriority bool
	Priority    int
	Effective   int
	HeardSeq    uint64
	Preempt     bool
}

// Priorities are the sender's configured and effective priority, or
// DefaultPriority for both when it said none (an older server).
func (e Envelope) Priorities() (configured, effective int) {
	if !e.HasPriority {
		return DefaultPriority, DefaultPriority
	}
	return e.Priority, e.Effective
}

// Echoes reports whether e echoes nonce.
func (e Envelope) Echoes(nonce string) bool {
	for _, n := range e.Echo {
		if n == nonce && n != "" {
			return true
		}
	}
	return false
}

// Clone reports whether e comes from another process that uses the failover
// id id (whose own process is instance): a duplicate failover id.
func (e Envelope) Clone(id, instance string) bool {
	return e.FailoverID == id && e.Instance != "" && instance != "" && e.Instance != instance
}

// StartedBefore reports whether the sender of e started before a process
// that started at startedMS with instance (ties broken by instance), i.e.
// whether that process is the later of two clones.
func (e Envelope) StartedBefore(startedMS int64, instance string) bool {
	if e.StartedMS != startedMS {
		return e.StartedMS < startedMS
	}
	return e.Instance < instance
}

// Headers encodes the envelope (without signature).
func (e Envelope) Headers() map[string]string {
	v := e.Version
	if v == "" {
		v = version.Version
	}
	h := map[string]string{
		HVersion:    v,
		HFailoverID: e.FailoverID,
		HEpoch:      strconv.FormatUint(e.Epoch, 10),
		HNode:       e.Node,
	}
	if e.Seq != 0 {
		h[HSeq] = strconv.FormatUint(e.Seq, 10)
	}
	if e.Advertise != "" {
		h[HAdvertise] = e.Advertise
	}
	if e.PeriodMS != 0 {
		h[HPeriodMS] = strconv.FormatInt(e.PeriodMS, 10)
	}
	if e.Role != "" {
		h[HRole] = e.Role
	}
	if e.SentMS != 0 {
		h[HSentMS] = strconv.FormatInt(e.SentMS, 10)
	}
	if e.HandoverTo != "" {
		h[HHandoverTo] = e.HandoverTo
	}
	if e.Maintenance {
		h[HMaintenance] = "true"
	}
	if e.Instance != "" {
		h[HInstance] = e.Instance
	}
	if e.StartedMS != 0 {
		h[HStartedMS] = strconv.FormatInt(e.StartedMS, 10)
	}
	if e.Nonce != "" {
		h[HNonce] = e.Nonce
	}
	if len(e.Echo) > 0 {
		h[HEcho] = strings.Join(e.Echo, ",")
	}
	if e.FailoverSig != "" {
		h[HFailoverSig] = e.FailoverSig
	}
	if e.Bound != "" {
		h[HBound] = e.Bound
	}
	if e.Stopping {
		h[HStopping] = "true"
	}
	if e.Command != "" {
		h[HCommand] = e.Command
	}
	if len(e.FailoverServers) > 0 {
		h[HFailoverServers] = strings.Join(e.FailoverServers, ",")
	}
	if e.HasPriority {
		h[HPriority] = strconv.Itoa(e.Priority)
		h[HEffective] = strconv.Itoa(e.Effective)
	}
	if e.HeardSeq != 0 {
		h[HHeardSeq] = strconv.FormatUint(e.HeardSeq, 10)
	}
	if e.Preempt {
		h[HPreempt] = "true"
	}
	return h
}

// maxHeader bounds any header value we accept, so a hostile peer cannot make
// us keep large strings.
const maxHeader = 256

// Decode parses and validates the headers of a received message.
func Decode(h map[string]string) (Envelope, error) {
	var e Envelope
	for k, v := range h {
		if len(v) > maxHeader {
			return e, fmt.Errorf("%w: %s longer than %d bytes", ErrBadHeader, k, maxHeader)
		}
	}
	var ok bool
	if e.Version, ok = h[HVersion]; !ok || e.Version == "" {
		return e, fmt.Errorf("%w: %s", ErrMissingHeader, HVersion)
	}
	if e.FailoverID, ok = h[HFailoverID]; !ok || e.FailoverID == "" {
		return e, fmt.Errorf("%w: %s", ErrMissingHeader, HFailoverID)
	}
	e.FailoverID = asciiLower(e.FailoverID)
	if e.Node, ok = h[HNode]; !ok || e.Node == "" {
		return e, fmt.Errorf("%w: %s", ErrMissingHeader, HNode)
	}
	ep, ok := h[HEpoch]
	if !ok {
		return e, fmt.Errorf("%w: %s", ErrMissingHeader, HEpoch)
	}
	var err error
	if e.Epoch, err = strconv.ParseUint(ep, 10, 64); err != nil {
		return e, fmt.Errorf("%w: %s=%q: expected an unsigned integer", ErrBadHeader, HEpoch, ep)
	}
	if v, ok := h[HSeq]; ok {
		if e.Seq, err = strconv.ParseUint(v, 10, 64); err != nil {
			return e, fmt.Errorf("%w: %s=%q: expected an unsigned integer", ErrBadHeader, HSeq, v)
		}
	}
	if v, ok := h[HPeriodMS]; ok {
		if e.PeriodMS, err = strconv.ParseInt(v, 10, 64); err != nil || e.PeriodMS < 0 {
			return e, fmt.Errorf("%w: %s=%q: expected a non-negative integer", ErrBadHeader, HPeriodMS, v)
		}
	}
	if v, ok := h[HSentMS]; ok {
		if e.SentMS, err = strconv.ParseInt(v, 10, 64); err != nil {
			return e, fmt.Errorf("%w: %s=%q: expected an integer", ErrBadHeader, HSentMS, v)
		}
	}
	if v, ok := h[HStartedMS]; ok {
		if e.StartedMS, err = strconv.ParseInt(v, 10, 64); err != nil {
			return e, fmt.Errorf("%w: %s=%q: expected an integer", ErrBadHeader, HStartedMS, v)
		}
	}
	e.Instance = h[HInstance]
	e.Advertise = h[HAdvertise]
	e.Role = h[HRole]
	e.HandoverTo = asciiLower(h[HHandoverTo])
	e.Maintenance = h[HMaintenance] == "true"
	e.Nonce = h[HNonce]
	if v := h[HEcho]; v != "" {
		e.Echo = strings.Split(v, ",")
	}
	e.FailoverSig = h[HFailoverSig]
	e.Bound = h[HBound]
	e.Stopping = h[HStopping] == "true"
	e.Command = h[HCommand]
	if v := h[HFailoverServers]; v != "" {
		e.FailoverServers = strings.Split(v, ",")
	}
	_, e.HasPriority = h[HPriority]
	for _, pv := range []struct {
		k string
		p *int
	}{{HPriority, &e.Priority}, {HEffective, &e.Effective}} {
		if v, ok := h[pv.k]; ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > MaxPriority {
				return e, fmt.Errorf("%w: %s=%q: expected an integer 0..%d", ErrBadHeader, pv.k, v, MaxPriority)
			}
			*pv.p = n
		}
	}
	if v, ok := h[HHeardSeq]; ok {
		if e.HeardSeq, err = strconv.ParseUint(v, 10, 64); err != nil {
			return e, fmt.Errorf("%w: %s=%q: expected an unsigned integer", ErrBadHeader, HHeardSeq, v)
		}
	}
	e.Preempt = h[HPreempt] == "true"
	return e, nil
}

// asciiLower lower-cases ASCII letters only. strings.ToLower would turn each
// invalid UTF-8 byte into a 3-byte U+FFFD and so grow a value past the bound
// Decode checked (found by FuzzDecode).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Signer signs and verifies messages. NewSigner(secret) signs everything
// with the shared HMAC secret (a Signer with no key signs nothing and
// accepts everything); NewGroupSigner adds the group's Ed25519 key for
// server messages (keys.go).
type Signer struct {
	key       []byte
	priv      ed25519.PrivateKey
	pub       ed25519.PublicKey
	agentDest string // the destination agents publish on ("" = every one is HMAC)
	verified  verdicts
}

// NewSigner returns a signer for key (nil or empty: signing off).
func NewSigner(key []byte) *Signer { return &Signer{key: append([]byte(nil), key...)} }

// Enabled reports whether messages are signed or verified at all.
func (s *Signer) Enabled() bool { return s != nil && (len(s.key) > 0 || s.pub != nil) }

// Sign adds the signature header to h (in place): the group key's on a
// server destination when this signer holds it, else the HMAC when a
// secret is configured.
func (s *Signer) Sign(dest string, h map[string]string, body []byte) {
	if s == nil {
		return
	}
	if s.priv != nil && s.serverDest(dest) {
		s.signGroup(dest, h, body)
		return
	}
	if len(s.key) == 0 {
		return
	}
	h[HSignature] = hex.EncodeToString(s.mac(dest, h, body))
}

// Verify checks a message's signature: the group key's on a server
// destination when a public key is configured, else the HMAC when a secret
// is configured; with neither it accepts (the insecure mode).
func (s *Signer) Verify(dest string, h map[string]string, body []byte) error {
	if s == nil {
		return nil
	}
	if s.pub != nil && s.serverDest(dest) {
		return s.verifyGroup(dest, h, body)
	}
	if len(s.key) == 0 {
		return nil
	}
	sig, ok := h[HSignature]
	if !ok {
		return ErrUnsigned
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(dest, h, body)) {
		return ErrBadSignature
	}
	return nil
}

// signed lists the headers the signature covers: tandem's own. Brokers add
// transport headers of their own (go-stomp's server adds "id", others add
// message-id, expires, ...), so anything else is left out of the MAC.
var signed = map[string]bool{
	HVersion: true, HFailoverID: true, HEpoch: true, HNode: true, HSeq: true, HAdvertise: true,
	HPeriodMS: true, HRole: true, HSentMS: true, HHandoverTo: true, HMaintenance: true,
	HInstance: true, HStartedMS: true, HNonce: true, HEcho: true, HFailoverSig: true, HBound: true, HStopping: true, HCommand: true, HFailoverServers: true, HRosterPart: true,
	HPriority: true, HEffective: true, HHeardSeq: true, HPreempt: true,
}

// SignedHeaders lists the headers a signature covers (tandem's own), so
// that the transport can check it passes every one of them on.
func SignedHeaders() []string {
	out := make([]string, 0, len(signed))
	for k := range signed {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (s *Signer) mac(dest string, h map[string]string, body []byte) []byte {
	return macOf(s.key, canonical(dest, h, body))
}

// Member is one backup of a group as the primary's heartbeats list it (in
// the heartbeat's body, JSON): backups learn each other from it, and
// `tandem members` shows it.
type Member struct {
	Node           string `json:"node"`
	FailoverID     string `json:"failover_id"`
	Address        string `json:"address,omitempty"`
	Priority       int    `json:"priority"`
	Effective      int    `json:"effective_priority"`
	Maintenance    bool   `json:"maintenance,omitempty"`
	HeardSeq       uint64 `json:"heard_seq,omitempty"`
	LastReplyAgeMS int64  `json:"last_reply_age_ms"`
}

// MaxMembers bounds the members a heartbeat lists (and a receiver keeps).
const MaxMembers = 32

type heartbeatBody struct {
	Members []Member `json:"members"`
}

// EncodeMembers is a heartbeat body listing ms (at most MaxMembers).
func EncodeMembers(ms []Member) []byte {
	if len(ms) == 0 {
		return nil
	}
	if len(ms) > MaxMembers {
		ms = ms[:MaxMembers]
	}
	b, _ := json.Marshal(heartbeatBody{Members: ms})
	return b
}

// DecodeMembers reads a heartbeat body (empty: no members). A body that
// is not a members list, lists more than MaxMembers, or has a field out of
// bounds is an error and lists nobody.
func DecodeMembers(body []byte) ([]Member, error) {
	if len(body) == 0 {
		return nil, nil
	}
	var hb heartbeatBody
	if err := json.Unmarshal(body, &hb); err != nil {
		return nil, fmt.Errorf("%w: heartbeat body: %v", ErrBadHeader, err)
	}
	if len(hb.Members) > MaxMembers {
		return nil, fmt.Errorf("%w: heartbeat body lists %d members, more than %d", ErrBadHeader, len(hb.Members), MaxMembers)
	}
	for i, m := range hb.Members {
		if m.FailoverID == "" || len(m.FailoverID) > 64 || len(m.Node) > maxHeader || len(m.Address) > maxHeader ||
			m.Priority < 0 || m.Priority > MaxPriority || m.Effective < 0 || m.Effective > MaxPriority || m.LastReplyAgeMS < 0 {
			return nil, fmt.Errorf("%w: heartbeat body: member %d out of bounds", ErrBadHeader, i)
		}
		hb.Members[i].FailoverID = asciiLower(m.FailoverID)
	}
	return hb.Members, nil
}
