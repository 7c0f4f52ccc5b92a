package failoverid

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadOrCreateIDCreatesOnceWithMode0600(t *testing.T) {
	dir := t.TempDir()
	id, created, err := LoadOrCreateID(dir)
	if err != nil || !created {
		t.Fatalf("first start: id=%q created=%v err=%v", id, created, err)
	}
	if _, err := ParseID(id); err != nil {
		t.Fatalf("created id is not canonical: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, IDFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
	again, created, err := LoadOrCreateID(dir)
	if err != nil || created || again != id {
		t.Fatalf("second start: id=%q created=%v err=%v, want %q not created", again, created, err, id)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestCorruptIDIsAnErrorAndNeverReplaced(t *testing.T) {
	cases := map[string]string{
		"empty":       "",
		"garbage":     "not-a-uuid\n",
		"braces":      "{3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31}\n",
		"two lines":   "3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31\n3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e32\n",
		"binary":      "\x00\x01\x02",
		"urn":         "urn:uuid:3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31",
		"truncated":   "3f1c2a9e-8d4b-4c1a-9e2f",
		"only spaces": "   \n",
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, IDFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, created, err := LoadOrCreateID(dir)
			if err == nil || created {
				t.Fatalf("want an error, got created=%v err=nil", created)
			}
			if !errors.Is(err, ErrCorruptID) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "UUID") {
				t.Fatalf("error should name the file and the expected form: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error must be one line: %q", err)
			}
			b, _ := os.ReadFile(path)
			if string(b) != content {
				t.Fatalf("corrupt file was modified: %q", b)
			}
		})
	}
}

func TestIDToleratesCRLFAndSurroundingSpace(t *testing.T) {
	dir := t.TempDir()
	const id = "3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31"
	os.WriteFile(filepath.Join(dir, IDFile), []byte(" "+id+"\r\n"), 0o600)
	got, err := LoadID(dir)
	if err != nil || got != id {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestRegenerateIDChangesIt(t *testing.T) {
	dir := t.TempDir()
	a, _, _ := LoadOrCreateID(dir)
	b, err := RegenerateID(dir)
	if err != nil || a == b {
		t.Fatalf("regenerate: %q -> %q, %v", a, b, err)
	}
	c, _ := LoadID(dir)
	if c != b {
		t.Fatalf("regenerated id not persisted: %q vs %q", c, b)
	}
}

func TestStateRoundTripAndMissingIsZero(t *testing.T) {
	dir := t.TempDir()
	s, err := LoadState(dir)
	if err != nil || s.Epoch != 0 || s.Takeover != nil {
		t.Fatalf("missing state: %+v %v", s, err)
	}
	want := State{
		Epoch: 7, Role: "backup",
		Takeover: &Journal{Epoch: 7, Reason: "failover", Step: StepAgentsRewritten, Started: time.Unix(1700000000, 0).UTC(),
			From: &Peer{Node: "a", FailoverID: "3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31", Epoch: 6, Address: "127.0.0.1:61620"}},
		FencedBy: &Token{ID: "x", Epoch: 9},
	}
	if err := SaveState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Epoch != 7 || got.Takeover == nil || got.Takeover.Step != StepAgentsRewritten || got.Takeover.From.Node != "a" ||
		!got.Takeover.Started.Equal(want.Takeover.Started) || got.FencedBy.Epoch != 9 {
		t.Fatalf("round trip: %+v", got)
	}
	st, _ := os.Stat(filepath.Join(dir, StateFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state mode %v", st.Mode().Perm())
	}
}

func TestCorruptStateIsAnErrorNeverAReset(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"truncated":      `{"epoch": 5`,
		"negative epoch": `{"epoch": -1}`,
		"string epoch":   `{"epoch": "5"}`,
		"trailing":       `{"epoch": 5} {"epoch": 0}`,
		"bad step":       `{"epoch": 5, "takeover": {"epoch": 5, "step": "nonsense"}}`,
		"journal ahead":  `{"epoch": 5, "takeover": {"epoch": 6, "step": "epoch-persisted"}}`,
		"not object":     `[1,2]`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StateFile)
			os.WriteFile(path, []byte(content), 0o600)
			s, err := LoadState(dir)
			if err == nil {
				t.Fatalf("want an error, got %+v", s)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error should wrap ErrCorrupt and name the file: %v", err)
			}
		})
	}
}

func TestTokenCompare(t *testing.T) {
	a := Token{ID: "a", Epoch: 3}
	b := Token{ID: "b", Epoch: 4}
	if a.Compare(b) != -1 || b.Compare(a) != 1 || a.Compare(a) != 0 {
		t.Fatal("compare orders by epoch")
	}
	// An equal epoch is broken by the failover id: no two servers tie.
	z := Token{ID: "z", Epoch: 3}
	if a.Compare(z) != -1 || z.Compare(a) != 1 || !z.Above(a) || a.Above(z) || a.Above(a) {
		t.Fatal("an equal epoch must be ordered by failover id")
	}
	// The epoch decides before the id does.
	if (Token{ID: "z", Epoch: 2}).Above(Token{ID: "a", Epoch: 3}) {
		t.Fatal("epoch first")
	}
	if a.Same(Token{ID: "z", Epoch: 3}) || !a.Same(Token{ID: "a", Epoch: 3}) {
		t.Fatal("same needs id and epoch")
	}
	for _, c := range []struct{ own, seen, want uint64 }{{3, 9, 10}, {9, 3, 10}, {0, 0, 1}, {math.MaxUint64 - 1, 0, math.MaxUint64}} {
		if got, err := NextEpoch(c.own, c.seen); err != nil || got != c.want {
			t.Fatalf("NextEpoch(%d, %d) = %d, %v; want %d", c.own, c.seen, got, err, c.want)
		}
	}
	// A file claiming 2^64-1 must not wrap a takeover to epoch 0.
	if got, err := NextEpoch(5, math.MaxUint64); !errors.Is(err, ErrEpochExhausted) {
		t.Fatalf("NextEpoch(5, max) = %d, %v; want ErrEpochExhausted", got, err)
	}
	if StepIndex(StepEpochPersisted) != 0 || StepIndex("x") != -1 {
		t.Fatal("step index")
	}
}

func TestParseIDNormalisesCase(t *testing.T) {
	got, err := ParseID("3F1C2A9E-8D4B-4C1A-9E2F-0B7D6A5C4E31")
	if err != nil || got != "3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestDataDirLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dir); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second lock: %v", err)
	}
	if !Locked(dir) {
		t.Fatal("Locked says free while held")
	}
	unlock()
	if Locked(dir) {
		t.Fatal("Locked says held after unlock")
	}
	again, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	again()
}
