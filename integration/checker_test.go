package integration

import (
	"fmt"
	"strings"
	"testing"
)

func TestServerInvariantCheckerCatchesViolations(t *testing.T) {
	ok := `{"t_ms":1,"node":"a","kind":"role","role":"primary","epoch":1}
{"t_ms":2,"node":"a","kind":"heartbeat","failover_id":"A","epoch":1}
{"t_ms":3,"node":"b","kind":"heartbeat","failover_id":"B","epoch":2}
{"t_ms":4,"node":"a","kind":"fenced","failover_id":"B","epoch":2}
{"t_ms":5,"node":"a","kind":"role","role":"backup","epoch":1}
{"t_ms":6,"node":"a","kind":"heartbeat","failover_id":"A","epoch":3}`
	if v := serverViolations(ok); len(v) != 0 {
		t.Fatalf("clean log reported: %v", v)
	}
	i4 := ok + "\n" + `{"t_ms":7,"node":"b","kind":"heartbeat","failover_id":"B","epoch":3}`
	if v := serverViolations(i4); len(v) != 1 || !strings.Contains(v[0], "I4") {
		t.Fatalf("I4 not caught: %v", v)
	}
	i5 := `{"t_ms":1,"node":"a","kind":"fenced","failover_id":"B","epoch":2}
{"t_ms":9,"node":"a","kind":"command","failover_id":"A","epoch":1}`
	if v := serverViolations(i5); len(v) != 1 || !strings.Contains(v[0], "I5") {
		t.Fatalf("I5 not caught: %v", v)
	}
	if v := serverViolations("{not json"); len(v) != 1 {
		t.Fatalf("bad line not reported: %v", v)
	}
}

func TestAgentInvariantCheckerCatchesI1(t *testing.T) {
	var e event
	e.Agent, e.Accepted = "x", true
	e.From.ID, e.From.Epoch = "A", 1
	e.Bound.ID, e.Bound.Epoch = "B", 2
	ft := &fakeTB{TB: t}
	checkI1(ft, []event{e})
	if len(ft.errs) != 1 || !strings.Contains(ft.errs[0], "I1") {
		t.Fatalf("I1 not caught: %v", ft.errs)
	}
}

type fakeTB struct {
	testing.TB
	errs []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, a ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, a...))
}
