package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// checkI1's witness is the sampled file, not the agent's own word: an agent
// that accepted a command from a server its file did not name at that time
// fails the check, whatever it says it was bound to.
func TestAgentInvariantCheckerCatchesI1(t *testing.T) {
	accepted := func(agent, id string, epoch uint64, at int64) event {
		var e event
		e.Agent, e.Accepted, e.T = agent, true, at
		e.From.ID, e.From.Epoch = id, epoch
		e.Bound = e.From // the agent claims it was bound to the sender
		return e
	}
	const f = "/agents/a00000/conf/address.yaml"
	files := agentFiles([]string{f})
	// The file named A@1 until t=4990 (last seen), B@2 from t=5010.
	w := &epochSampler{timeline: map[string][]fileSpan{f: {
		{from: 1000, to: 4990, id: "A", epoch: 1},
		{from: 5010, to: 9000, id: "B", epoch: 2},
	}}}
	cases := []struct {
		name string
		e    event
		bad  string // "" when the command was allowed
	}{
		{"A while the file named A", accepted("agent0", "A", 1, 3000), ""},
		{"B while the file named B", accepted("agent0", "B", 2, 7000), ""},
		{"A in the gap of the rewrite", accepted("agent0", "A", 1, 5005), ""},
		{"A stamped just after the rewrite (read before it)", accepted("agent0", "A", 1, 5010+i1Slack-1), ""},
		{"fleet id", accepted("a00000/conf", "B", 2, 9500), ""},
		{"B before the file named B", accepted("agent0", "B", 2, 4000), "I1 violated"},
		{"A long after the file moved to B", accepted("agent0", "A", 1, 7000), "I1 violated"},
		{"A just past the slack", accepted("agent0", "A", 1, 5010+i1Slack+1), "I1 violated"},
		{"a server the file never named", accepted("agent0", "C", 3, 7000), "I1 violated"},
		{"an agent whose file is unknown", accepted("agent7", "A", 1, 3000), "I1 unchecked"},
	}
	for _, c := range cases {
		ft := &fakeTB{TB: t}
		checkI1(ft, []event{c.e}, w, files)
		switch {
		case c.bad == "" && len(ft.errs) != 0:
			t.Errorf("%s: reported: %v", c.name, ft.errs)
		case c.bad != "" && (len(ft.errs) != 1 || !strings.Contains(ft.errs[0], c.bad)):
			t.Errorf("%s: want one %q, got %v", c.name, c.bad, ft.errs)
		}
	}
	// A rejected command is no violation; no sampler at all is.
	rej := accepted("agent0", "C", 3, 7000)
	rej.Accepted = false
	ft := &fakeTB{TB: t}
	checkI1(ft, []event{rej}, w, files)
	if len(ft.errs) != 0 {
		t.Errorf("rejected command reported: %v", ft.errs)
	}
	checkI1(ft, []event{accepted("agent0", "A", 1, 3000)}, nil, files)
	if len(ft.errs) != 1 || !strings.Contains(ft.errs[0], "I1 unchecked") {
		t.Errorf("no witness not reported: %v", ft.errs)
	}
}

// The same with a real sampler on a real file: the file names B@2 (the
// agent's own record says A@1, as a buggy agent would), the agent accepts
// A@1 → I1 violated; it accepts B@2 → fine.
func TestCheckerI1AgainstTheSampledFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "a00000", "conf", "address.yaml")
	mustOK(t, os.MkdirAll(filepath.Dir(f), 0o755))
	file := func(id string, epoch int) string {
		return fmt.Sprintf("# DataStax agent address file\nstomp_interface: 127.0.0.1   # the OpsCenter server\nstomp_port: 1\nuse_ssl: 0\n# keep this\njmx_port: 7199\nfailover_id: %s\nfailover_epoch: %d\n", id, epoch)
	}
	mustOK(t, os.WriteFile(f, []byte(file("A", 1)), 0o644))
	s := startEpochSampler(t, []string{f})
	samples := func(n int) {
		s.mu.Lock()
		base := s.samples
		s.mu.Unlock()
		eventually(t, 5*time.Second, fmt.Sprintf("%d more samples", n), func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.samples >= base+n
		})
	}
	samples(2)
	mustOK(t, os.WriteFile(f, []byte(file("B", 2)), 0o644))
	eventually(t, 10*time.Second, "the file sampled as B@2 for longer than the slack", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		tl := s.timeline[f]
		last := tl[len(tl)-1]
		return last.id == "B" && last.epoch == 2 && last.to-last.from > 2*i1Slack
	})
	now := time.Now().UnixMilli()
	s.halt()
	var e event
	e.Agent, e.Accepted, e.T = "agent0", true, now
	e.From.ID, e.From.Epoch = "A", 1
	e.Bound = e.From
	ft := &fakeTB{TB: t}
	checkI1(ft, []event{e}, s, agentFiles([]string{f}))
	if len(ft.errs) != 1 || !strings.Contains(ft.errs[0], "I1 violated") || !strings.Contains(ft.errs[0], "B@2") {
		t.Fatalf("accepting A@1 while the file named B@2: want one I1 violation naming B@2, got %v", ft.errs)
	}
	e.From.ID, e.From.Epoch = "B", 2
	ft = &fakeTB{TB: t}
	checkI1(ft, []event{e}, s, agentFiles([]string{f}))
	if len(ft.errs) != 0 {
		t.Fatalf("accepting B@2 while the file named B@2 reported: %v", ft.errs)
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
