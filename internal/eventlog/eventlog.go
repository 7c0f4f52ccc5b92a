// Package eventlog appends tandem's audit events as JSON lines: one object a
// line, {"t_ms", "node", "kind", ...}. Servers log what they send and every
// role change; agents log every command they accept or reject. The
// fault-injection suite's invariant checker reads these files.
package eventlog

import (
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Event is one line.
type Event struct {
	TMS        int64  `json:"t_ms"`
	Node       string `json:"node"`
	Kind       string `json:"kind"` // heartbeat, command, role, fenced
	FailoverID string `json:"failover_id,omitempty"`
	Epoch      uint64 `json:"epoch"`
	Seq        uint64 `json:"seq,omitempty"`
	Role       string `json:"role,omitempty"`
	Detail     string `json:"detail,omitempty"`
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
	e.TMS = time.Now().UnixMilli()
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
