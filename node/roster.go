package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/fsutil"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

// RosterFile is DATA/roster.json: the agents the primary has heard, as its
// backup last received them, so that after a takeover the new primary
// knows whom to expect (agents on their own hosts that no file names).
const RosterFile = "roster.json"

// RosterEntry is one agent of the roster.
type RosterEntry struct {
	ID         string    `json:"id"`
	Path       string    `json:"path,omitempty"` // its address.yaml, as the agent reports it
	FailoverID string    `json:"failover_id"`    // the token it was bound to
	Epoch      uint64    `json:"epoch"`
	LastSeen   time.Time `json:"last_seen"`
}

// Roster is the roster.json document.
type Roster struct {
	// From and Epoch name the primary that sent it.
	From     string        `json:"from"`
	Epoch    uint64        `json:"epoch"`
	Received time.Time     `json:"received"`
	Agents   []RosterEntry `json:"agents"`
}

// rosterPart bounds one roster message (the broker's frame limit is 1 MiB).
const rosterPart = 2000

// maxRoster bounds what a backup keeps.
const maxRoster = 100000

// rosterEvery is how often a primary sends its roster: every 10 periods,
// between 1 s and 60 s.
func rosterEvery(period time.Duration) time.Duration {
	return min(max(10*period, time.Second), time.Minute)
}

// sendRoster publishes the registry as the roster, in parts, signed.
func (n *Node) sendRoster(ctx context.Context, bus broker.Bus, agents []primary.AgentView, token string, epoch, gen uint64) {
	entries := make([]RosterEntry, 0, len(agents))
	for _, a := range agents {
		entries = append(entries, RosterEntry{ID: a.ID, Path: a.Path, FailoverID: a.FailoverID, Epoch: a.Epoch, LastSeen: a.LastSeen.UTC()})
	}
	parts := max((len(entries)+rosterPart-1)/rosterPart, 1)
	for i := 0; i < parts; i++ {
		chunk := entries[i*rosterPart : min((i+1)*rosterPart, len(entries))]
		body, err := json.Marshal(chunk)
		if err != nil {
			return
		}
		env := protocol.Envelope{FailoverID: token, Epoch: epoch, Node: n.cfg.Node, Seq: gen, Role: "primary"}
		h := env.Headers()
		h[hRosterPart] = strconv.Itoa(i) + "/" + strconv.Itoa(parts)
		n.signer.Sign(n.dest.Roster, h, body)
		pctx, cancel := context.WithTimeout(ctx, n.cfg.Heartbeat.Period)
		_ = bus.Publish(pctx, n.dest.Roster, h, body)
		cancel()
	}
}

// hRosterPart is "i/n": part i of n of one roster (its seq), signed.
const hRosterPart = protocol.HRosterPart

// rosterReceiver assembles a primary's roster from its parts and keeps it
// in DATA/roster.json (written atomically, at most once per second).
type rosterReceiver struct {
	n *Node

	mu      sync.Mutex
	gen     uint64
	from    string
	epoch   uint64
	parts   map[int][]RosterEntry
	total   int
	written time.Time
}

// receive takes one roster message; primary is the failover id of the
// primary this backup watches (messages of anyone else are ignored).
func (r *rosterReceiver) receive(m broker.Message, primaryID string) error {
	if err := r.n.signer.Verify(m.Destination, m.Headers, m.Body); err != nil {
		return err
	}
	env, err := protocol.Decode(m.Headers)
	if err != nil {
		return err
	}
	if env.FailoverID != primaryID || primaryID == "" {
		return fmt.Errorf("a roster from %s, not from the primary this backup watches", env.FailoverID)
	}
	var i, total int
	if _, err := fmt.Sscanf(m.Headers[hRosterPart], "%d/%d", &i, &total); err != nil || total < 1 || total > maxRoster/rosterPart+1 || i < 0 || i >= total {
		return fmt.Errorf("roster-part %q", m.Headers[hRosterPart])
	}
	var chunk []RosterEntry
	if err := json.Unmarshal(m.Body, &chunk); err != nil || len(chunk) > rosterPart {
		return fmt.Errorf("roster body: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if env.Seq != r.gen || env.FailoverID != r.from {
		r.gen, r.from, r.epoch, r.parts, r.total = env.Seq, env.FailoverID, env.Epoch, map[int][]RosterEntry{}, total
	}
	r.parts[i] = chunk
	if len(r.parts) < r.total || time.Since(r.written) < time.Second {
		return nil
	}
	ro := Roster{From: r.from, Epoch: r.epoch, Received: time.Now().UTC()}
	for k := 0; k < r.total; k++ {
		ro.Agents = append(ro.Agents, r.parts[k]...)
	}
	r.written = time.Now()
	return saveRoster(r.n.cfg.DataDir, ro)
}

func saveRoster(dataDir string, ro Roster) error {
	sort.Slice(ro.Agents, func(i, j int) bool { return ro.Agents[i].ID < ro.Agents[j].ID })
	b, err := json.MarshalIndent(ro, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFile(filepath.Join(dataDir, RosterFile), append(b, '\n'), fsutil.Options{Perm: 0o640})
}

// LoadRoster reads DATA/roster.json ("" and no error when there is none).
func LoadRoster(dataDir string) (Roster, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, RosterFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Roster{}, nil
	}
	if err != nil {
		return Roster{}, err
	}
	var ro Roster
	if err := json.Unmarshal(b, &ro); err != nil {
		return Roster{}, fmt.Errorf("%s: %v", filepath.Join(dataDir, RosterFile), err)
	}
	return ro, nil
}
