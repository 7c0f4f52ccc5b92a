package eventlog

import (
	"strings"
	"testing"
)

func sends(node, id string, epoch uint64, at ...int64) []Event {
	var out []Event
	for _, t := range at {
		out = append(out, Event{Node: node, FailoverID: id, Epoch: epoch, Kind: KindHeartbeat, Role: "primary", HostMonoNS: t})
	}
	return out
}

func TestCheckI8(t *testing.T) {
	a := sends("a", "A", 1, 10, 20, 30)
	b := sends("b", "B", 2, 40, 50)
	if errs := CheckI8([][]Event{a, b}); len(errs) != 0 {
		t.Fatalf("disjoint stretches reported: %v", errs)
	}
	// b starts while a still sends: one violation, naming both.
	b2 := sends("b", "B", 2, 25, 35)
	errs := CheckI8([][]Event{a, b2})
	if len(errs) != 1 || !strings.Contains(errs[0], "I8 violated") || !strings.Contains(errs[0], "a (epoch 1)") || !strings.Contains(errs[0], "b (epoch 2)") {
		t.Fatalf("overlap: %v", errs)
	}
	// a deposed, then a again later at a new epoch: its own stretches never
	// conflict with each other; b in the gap is fine.
	a3 := append(sends("a", "A", 1, 10, 20), Event{Node: "a", Kind: KindDeposed, HostMonoNS: 21})
	a3 = append(a3, sends("a", "A", 3, 60, 70)...)
	if errs := CheckI8([][]Event{a3, b}); len(errs) != 0 {
		t.Fatalf("stretches in turn reported: %v", errs)
	}
	if got := ActingStretches(a3); len(got) != 2 || got[0].Last != 20 || got[1].First != 60 || got[1].Sends != 2 {
		t.Fatalf("stretches %+v", got)
	}
	// Records without the host clock (older logs) or not as primary are ignored.
	old := []Event{{Node: "c", FailoverID: "C", Kind: KindHeartbeat, Role: "primary"}, {Node: "c", FailoverID: "C", Kind: KindCommand, Role: "backup", HostMonoNS: 15}}
	if errs := CheckI8([][]Event{a, old}); len(errs) != 0 {
		t.Fatalf("unstamped records counted: %v", errs)
	}
}

func TestHostMonoIsSharedAndMonotonic(t *testing.T) {
	x, y := HostMono(), HostMono()
	if x <= 0 || y < x {
		t.Fatalf("host monotonic clock %d then %d", x, y)
	}
}
