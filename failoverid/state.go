package failoverid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// Takeover steps, in the order the takeover procedure runs them. The journal
// records the last step completed, so a restart resumes with the next one.
const (
	StepEpochPersisted   = "epoch-persisted"   // epoch = max(own, seen)+1 is on disk
	StepBeforeHook       = "before-hook-done"  // before_takeover ran (or none)
	StepAgentsRewritten  = "agents-rewritten"  // every managed address.yaml CAS-rewritten
	StepLocationDormant  = "location-dormant"  // primary_location renamed .dormant
	StepPrimaryHeartbeat = "primary-heartbeat" // heartbeating as primary; after_takeover next
)

var stepOrder = []string{StepEpochPersisted, StepBeforeHook, StepAgentsRewritten, StepLocationDormant, StepPrimaryHeartbeat}

// StepIndex returns the position of a step (0-based), or -1 if unknown.
func StepIndex(step string) int {
	for i, s := range stepOrder {
		if s == step {
			return i
		}
	}
	return -1
}

// Journal is an in-progress takeover.
type Journal struct {
	Epoch   uint64    `json:"epoch"`
	Reason  string    `json:"reason"` // "failover" or "switchover"
	Step    string    `json:"step"`   // last completed step
	Started time.Time `json:"started"`
	From    *Peer     `json:"from,omitempty"` // the primary being replaced
}

// Peer is what a server remembers of the other server of its pair.
type Peer struct {
	Node       string `json:"node,omitempty"`
	FailoverID string `json:"failover_id,omitempty"`
	Epoch      uint64 `json:"epoch,omitempty"`
	// Address is the peer's broker (host:port) where its heartbeat channel is.
	Address string `json:"address,omitempty"`
}

// State is DATA/state.json.
type State struct {
	Epoch uint64 `json:"epoch"`
	// Role is the last role this server held ("primary", "backup", "fenced").
	Role string `json:"role,omitempty"`
	// Takeover is non-nil while a takeover is in progress.
	Takeover *Journal `json:"takeover,omitempty"`
	// Peer is the other server of the pair, learned from heartbeats/replies.
	Peer *Peer `json:"peer,omitempty"`
	// FencedBy is the higher token that fenced this server, if any.
	FencedBy *Token `json:"fenced_by,omitempty"`
	// Maintenance pauses automatic failover; it survives restarts so that an
	// upgrade that restarts the backup does not end it by accident.
	Maintenance bool `json:"maintenance,omitempty"`
	// HeardPrimary is the primary_location whose primary this backup has
	// counted a valid heartbeat from. A backup takes over automatically
	// only from a primary it has heard: a typo in primary_location or
	// another group key must not take the role from a healthy primary.
	HeardPrimary string `json:"heard_primary,omitempty"`
}

// LoadState reads DATA/state.json. A missing file is the zero State (epoch 0,
// a server never started); a corrupt one is ErrCorrupt naming the file.
func LoadState(dataDir string) (State, error) {
	path := filepath.Join(dataDir, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, err
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("%s: %w: expected a JSON object with a numeric \"epoch\": %v (restore it from backup; never reset the epoch by hand to a lower value)", path, ErrCorrupt, err)
	}
	if dec.More() {
		return State{}, fmt.Errorf("%s: %w: trailing data after the JSON object", path, ErrCorrupt)
	}
	if s.Takeover != nil && StepIndex(s.Takeover.Step) < 0 {
		return State{}, fmt.Errorf("%s: %w: takeover.step %q is not one of %v", path, ErrCorrupt, s.Takeover.Step, stepOrder)
	}
	if s.Takeover != nil && s.Takeover.Epoch > s.Epoch {
		return State{}, fmt.Errorf("%s: %w: takeover.epoch %d is above epoch %d", path, ErrCorrupt, s.Takeover.Epoch, s.Epoch)
	}
	return s, nil
}

// SaveState writes DATA/state.json atomically and durably (mode 0600).
func SaveState(dataDir string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return fsutil.WriteFile(filepath.Join(dataDir, StateFile), b, fsutil.Options{Perm: 0o600})
}

// NextEpoch is the epoch a takeover claims: one above both this server's
// epoch and the highest epoch it has seen. There is none above 2^64-1
// (ErrEpochExhausted): a file claiming it cannot wrap a takeover to 0.
func NextEpoch(own, seen uint64) (uint64, error) { return nextEpoch(own, seen) }
