// Package eventlog appends tandem's audit events as JSON lines: one object a
// line, {"t_ms", "node", "kind", ...}. Servers log what they send and every
// role change; agents log every command they accept or reject. The
// fault-injection suite's invariant checker reads these files.
package eventlog

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Event kinds.
const (
	KindRole        = "role"        // a role change (Reason, From, To)
	KindFenced      = "fenced"      // fenced by a higher token
	KindTakeover    = "takeover"    // a takeover completed (PhasesMS)
	KindMaintenance = "maintenance" // maintenance on or off (Detail)
	KindRefused     = "refused"     // a start refused (Detail: why)
	KindHeartbeat   = "heartbeat"   // a heartbeat sent (event_log_messages)
	KindCommand     = "command"     // an agent command sent (event_log_messages)
	KindRebind      = "rebind"      // a rebind sent (event_log_messages)
	KindDeposed     = "deposed"     // the primary stopped acting: its arbiter term is over
)

// Event is one line.
type Event struct {
	TMS int64 `json:"t_ms"`
	// MonoMS is the writer's monotonic clock (ms since its start): lines of
	// one process order by it even if the wall clock jumps.
	MonoMS int64 `json:"mono_ms,omitempty"`
	// HostMonoNS is the host's monotonic clock (CLOCK_MONOTONIC, ns since
	// boot), the same for every process of the host: the I8 checker
	// orders two servers' records on one host by it.
	HostMonoNS int64  `json:"host_mono_ns,omitempty"`
	Node       string `json:"node"`
	Kind       string `json:"kind"` // see the Kind constants
	FailoverID string `json:"failover_id,omitempty"`
	Epoch      uint64 `json:"epoch"`
	Seq        uint64 `json:"seq,omitempty"`
	Role       string `json:"role,omitempty"`
	Detail     string `json:"detail,omitempty"`
	// Reason is why a role changed: failover, switchover, clean-stop,
	// fence, start, rejoin, resume.
	Reason string `json:"reason,omitempty"`
	// From and To are the old and the new primary (node names) of a role
	// change that moved the primary role.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// PhasesMS are a takeover's phase durations, in ms.
	PhasesMS map[string]int64 `json:"phases_ms,omitempty"`
}

// processStart anchors MonoMS (time.Since uses the monotonic reading).
var processStart = time.Now()

// Read returns the events of the file at path, in order; lines it cannot
// parse are skipped (a line cut by a crash). The file is read at most max
// bytes from its end when max > 0.
func Read(path string, max int64) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if max > 0 {
		if fi, err := f.Stat(); err == nil && fi.Size() > max {
			if _, err := f.Seek(fi.Size()-max, 0); err != nil {
				return nil, err
			}
		}
	}
	var out []Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Kind != "" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Log appends events to a file. A nil *Log discards everything.
type Log struct {
	mu  sync.Mutex
	f   *os.File
	enc *json.Encoder
}

// Open appends to path ("" gives a nil Log that discards).
func Open(path string) (*Log, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &Log{f: f, enc: json.NewEncoder(f)}, nil
}

// Add writes one event, stamped now. Each line is written with one write(2)
// on an O_APPEND file, so concurrent writers do not interleave.
func (l *Log) Add(e Event) {
	if l == nil {
		return
	}
	now := time.Now()
	e.TMS = now.UnixMilli()
	e.MonoMS = now.Sub(processStart).Milliseconds()
	e.HostMonoNS = HostMono()
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.enc.Encode(e)
}

// Close closes the file.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	return l.f.Close()
}

// HostMono reads the host's monotonic clock in ns (0 if it cannot).
func HostMono() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano()
}
