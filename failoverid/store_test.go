package failoverid

import (
	"errors"
	"testing"
)

func TestStoreMutationsComposeAndPersist(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A takeover journals epoch 2; an operator turns maintenance on in the
	// middle; the journal's next step must keep both.
	if _, err := s.Update(func(st *State) error {
		st.Epoch = 2
		st.Takeover = &Journal{Epoch: 2, Step: StepEpochPersisted, From: &Peer{Node: "a"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(func(st *State) error { st.Maintenance = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(func(st *State) error { st.Takeover.Step = StepAgentsRewritten; return nil }); err != nil {
		t.Fatal(err)
	}
	disk, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if disk.Epoch != 2 || !disk.Maintenance || disk.Takeover == nil || disk.Takeover.Step != StepAgentsRewritten {
		t.Fatalf("on disk: %+v", disk)
	}
}

func TestStoreRefusesALowerEpochAndAnUndoneFence(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, State{}, StoreOptions{})
	if _, err := s.Update(func(st *State) error { st.Epoch = 5; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(func(st *State) error { st.Epoch = 0; return nil }); !errors.Is(err, ErrEpochDown) {
		t.Fatalf("lowering the epoch: %v, want ErrEpochDown", err)
	}
	if _, err := s.Update(func(st *State) error { st.Role = "fenced"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(func(st *State) error { st.Role = "primary"; return nil }); !errors.Is(err, ErrStillFenced) {
		t.Fatalf("fenced → primary: %v, want ErrStillFenced", err)
	}
	disk, _ := LoadState(dir)
	if disk.Epoch != 5 || disk.Role != "fenced" {
		t.Fatalf("on disk: %+v", disk)
	}
}

func TestStorePublishesOnlyWhatIsPersisted(t *testing.T) {
	boom := errors.New("disk full")
	fail := false
	s := NewStore(t.TempDir(), State{Epoch: 1}, StoreOptions{Save: func(dir string, st State) error {
		if fail {
			return boom
		}
		return SaveState(dir, st)
	}})
	fail = true
	if _, err := s.Update(func(st *State) error { st.Epoch = 9; return nil }); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if got := s.Get().Epoch; got != 1 {
		t.Fatalf("epoch %d published although not persisted", got)
	}
	// Get returns a copy: mutating it changes nothing.
	fail = false
	if _, err := s.Update(func(st *State) error { st.Peer = &Peer{Node: "b"}; return nil }); err != nil {
		t.Fatal(err)
	}
	g := s.Get()
	g.Peer.Node = "x"
	if s.Get().Peer.Node != "b" {
		t.Fatal("Get shares pointers with the store")
	}
}

func TestStoreProbe(t *testing.T) {
	s := NewStore(t.TempDir(), State{}, StoreOptions{})
	if err := s.Probe(); err != nil {
		t.Fatal(err)
	}
	bad := NewStore("/nonexistent/tandem-probe", State{}, StoreOptions{})
	if err := bad.Probe(); !errors.Is(err, ErrNotWritable) {
		t.Fatalf("probe of a missing dir: %v", err)
	}
}
