package failoverid

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
)

// More sentinel errors of the state store.
var (
	// ErrEpochDown: a mutation tried to lower the epoch on disk.
	ErrEpochDown = errors.New("failoverid: the epoch never goes down")
	// ErrStillFenced: a mutation tried to make a fenced server primary again
	// (only an operator's rejoin, offline, clears a fence).
	ErrStillFenced = errors.New("failoverid: a fenced server does not become primary again without rejoin")
	// ErrEpochExhausted: no epoch above 2^64-1 exists.
	ErrEpochExhausted = errors.New("failoverid: epoch exhausted (2^64-1)")
	// ErrNotWritable: the data dir refused a probe write.
	ErrNotWritable = errors.New("failoverid: data dir is not writable")
)

// Store is the one writer of DATA/state.json in a running server. Every
// change is a mutation applied to the current state under one lock, checked
// (the epoch never goes down, a fence is never undone), persisted durably,
// and only then published to readers: nobody keeps a private copy that a
// later write could resurrect.
type Store struct {
	dir  string
	save func(dir string, s State) error

	mu sync.Mutex
	st State
}

// StoreOptions are a Store's seams (for tests: a failing disk).
type StoreOptions struct {
	// Save persists a state; default SaveState.
	Save func(dir string, s State) error
}

// OpenStore loads DATA/state.json (LoadState) and returns its store.
func OpenStore(dir string, opts StoreOptions) (*Store, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	return NewStore(dir, st, opts), nil
}

// NewStore is a store that starts from st (already on disk, or zero).
func NewStore(dir string, st State, opts StoreOptions) *Store {
	if opts.Save == nil {
		opts.Save = SaveState
	}
	return &Store{dir: dir, save: opts.Save, st: st.Clone()}
}

// Get returns a copy of the current state.
func (s *Store) Get() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Clone()
}

// Update applies mut to a copy of the current state and persists the result
// before publishing it. If mut returns an error nothing is written and the
// error is returned. A result that would lower the epoch (ErrEpochDown) or
// make a fenced server primary again (ErrStillFenced) is refused.
func (s *Store) Update(mut func(*State) error) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.st.Clone()
	if err := mut(&next); err != nil {
		return s.st.Clone(), err
	}
	if next.Epoch < s.st.Epoch {
		return s.st.Clone(), fmt.Errorf("%w: %d → %d refused", ErrEpochDown, s.st.Epoch, next.Epoch)
	}
	if s.st.Role == "fenced" && next.Role == "primary" {
		return s.st.Clone(), ErrStillFenced
	}
	if next.Takeover != nil && next.Takeover.Epoch > next.Epoch {
		return s.st.Clone(), fmt.Errorf("failoverid: takeover epoch %d above epoch %d", next.Takeover.Epoch, next.Epoch)
	}
	if err := s.save(s.dir, next); err != nil {
		return s.st.Clone(), err
	}
	s.st = next
	return next.Clone(), nil
}

// Probe checks that the data dir accepts a new file now (not read-only, not
// full of inodes, still ours to write), without touching state.json: a
// takeover probes it before it repoints a whole fleet at this server.
func (s *Store) Probe() error {
	f, err := os.CreateTemp(s.dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNotWritable, s.dir, err)
	}
	name := f.Name()
	_, werr := f.Write([]byte("tandem\n"))
	cerr := f.Close()
	rerr := os.Remove(name)
	for _, err := range []error{werr, cerr, rerr} {
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrNotWritable, filepath.Base(name), err)
		}
	}
	return nil
}

// Clone is a deep copy of s (its pointers are not shared).
func (s State) Clone() State {
	c := s
	if s.Takeover != nil {
		j := *s.Takeover
		if j.From != nil {
			p := *j.From
			j.From = &p
		}
		c.Takeover = &j
	}
	if s.Peer != nil {
		p := *s.Peer
		c.Peer = &p
	}
	if s.FencedBy != nil {
		t := *s.FencedBy
		c.FencedBy = &t
	}
	return c
}

// nextEpoch is NextEpoch's arithmetic, checked.
func nextEpoch(own, seen uint64) (uint64, error) {
	if seen > own {
		own = seen
	}
	if own == math.MaxUint64 {
		return 0, ErrEpochExhausted
	}
	return own + 1, nil
}
