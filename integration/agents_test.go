package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// event is one line of an agent's --events log.
type event struct {
	T        int64  `json:"t_ms"`
	Agent    string `json:"agent"`
	Accepted bool   `json:"accepted"`
	From     struct {
		ID    string `json:"failover_id"`
		Epoch uint64 `json:"epoch"`
	} `json:"from"`
	FromNode string `json:"from_node"`
	Bound    struct {
		ID    string `json:"failover_id"`
		Epoch uint64 `json:"epoch"`
	} `json:"bound"`
}

func readEvents(t testing.TB, path string) []event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%s: bad event line %q: %v", path, sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// checkI1 holds every accepted command against an independent witness: the
// sampler's timeline of the agent's address.yaml (files maps agent ids to
// their files, see agentFiles). The file, as sampled around the instant the
// agent logged the command, must name the sender's failover id and epoch.
// What the agent itself says it was bound to is not trusted.
func checkI1(t testing.TB, evs []event, w *epochSampler, files map[string]string) {
	t.Helper()
	if w == nil {
		for _, e := range evs {
			if e.Accepted {
				t.Errorf("I1 unchecked: agent %s accepted commands and no sampler watched its file", e.Agent)
				return
			}
		}
		return
	}
	for _, e := range evs {
		if !e.Accepted {
			continue
		}
		f, ok := files[e.Agent]
		if !ok {
			t.Errorf("I1 unchecked: agent %s accepted a command from %s@%d (node %s) and its file is not known", e.Agent, e.From.ID, e.From.Epoch, e.FromNode)
			continue
		}
		named, known := w.named(f, e.From.ID, e.From.Epoch, e.T)
		switch {
		case !known:
			t.Errorf("I1 unchecked: agent %s accepted a command from %s@%d (node %s) at t=%d and its file %s was never sampled", e.Agent, e.From.ID, e.From.Epoch, e.FromNode, e.T, f)
		case !named:
			t.Errorf("I1 violated: agent %s accepted a command from %s@%d (node %s) at t=%d while its address.yaml named: %s",
				e.Agent, e.From.ID, e.From.Epoch, e.FromNode, e.T, w.around(f, e.T))
		}
	}
}

// agentFiles maps the ids the harness gives its agents to their files:
// "agentN" for files[N] (tandem agent --id) and a fleet's id, the file's
// directory relative to the agents directory ("a00000/conf").
func agentFiles(files []string) map[string]string {
	m := map[string]string{}
	for i, f := range files {
		m[fmt.Sprintf("agent%d", i)] = f
		conf := filepath.Dir(f)
		m[filepath.Join(filepath.Base(filepath.Dir(conf)), filepath.Base(conf))] = f
	}
	return m
}

func TestAgentsFollowTheTakeoverAndNeverObeyTheFencedPrimary(t *testing.T) {
	c := newCluster(t)
	a, b, files := pairUp(t, c, 3)
	samp := startEpochSampler(t, files)
	allAt(t, files, a, 1, 10*time.Second)
	evPath := filepath.Join(c.dir, "events.jsonl")
	for i, f := range files {
		start(t, c.dir, fmt.Sprintf("agent%d", i), "agent", "--config", f, "--id", fmt.Sprintf("agent%d", i),
			"--period", "100ms", "--events", evPath)
	}
	idA, idB := mustStatus(t, a).FailoverID, mustStatus(t, b).FailoverID
	// Every agent obeys a.
	eventually(t, 10*time.Second, "3 agents connected to a", func() bool { return mustStatus(t, a).Agents.Connected == 3 })
	eventually(t, 10*time.Second, "each agent accepted a's pings", func() bool { return acceptedFrom(readEvents(t, evPath), idA, 1) == 3 })

	// Freeze a past the window: b takes over, the agents move to b.
	a.p.signal(syscall.SIGSTOP)
	c.waitRole(b, "primary", 10*time.Second)
	took := eventually(t, 10*time.Second, "3 agents connected to b", func() bool { return mustStatus(t, b).Agents.Connected == 3 })
	t.Logf("agents connected to the new primary %s after it became primary", took)
	if os.Getenv("TANDEM_DEBUG_AGENT") != "" {
		for _, n := range []string{"agent0", "agent1", "agent2", "b"} {
			t.Log(n, readFile(filepath.Join(c.dir, n+".log")))
		}
	}
	eventually(t, 10*time.Second, "each agent accepted b's pings", func() bool { return acceptedFrom(readEvents(t, evPath), idB, 2) == 3 })

	// `agents list` shows the file view next to the live view.
	ls := start(t, c.dir, "agents-list", "agents", "list", "--config", b.cfgPath, "--json")
	if code := ls.wait(20 * time.Second); code != 0 {
		t.Fatalf("agents list: exit %d", code)
	}
	var listing struct {
		Agents []struct {
			FailoverEpoch *uint64 `json:"failover_epoch"`
			Live          *struct {
				Connected bool   `json:"connected"`
				Epoch     uint64 `json:"epoch"`
			} `json:"live"`
		} `json:"agents"`
		ServerRunning bool `json:"server_running"`
		Connected     int  `json:"connected"`
	}
	if err := json.Unmarshal([]byte(ls.logText()), &listing); err != nil {
		t.Fatalf("agents list --json: %v\n%s", err, ls.logText())
	}
	if !listing.ServerRunning || listing.Connected != 3 || len(listing.Agents) != 3 {
		t.Fatalf("agents list: %+v", listing)
	}
	for _, r := range listing.Agents {
		if r.FailoverEpoch == nil || *r.FailoverEpoch != 2 || r.Live == nil || !r.Live.Connected || r.Live.Epoch != 2 {
			t.Fatalf("agents list row: file epoch %v live %+v", r.FailoverEpoch, r.Live)
		}
	}

	// a resumes and, until it notices, may still send as primary at epoch 1:
	// no agent may accept it.
	a.p.signal(syscall.SIGCONT)
	c.waitRole(a, "fenced", 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	evs := readEvents(t, evPath)
	checkI1(t, evs, samp, agentFiles(files))
	samp.check(t)
	last := map[string]uint64{}
	for _, e := range evs {
		if e.Accepted {
			if e.From.Epoch < last[e.Agent] {
				t.Errorf("agent %s accepted epoch %d after epoch %d", e.Agent, e.From.Epoch, last[e.Agent])
			}
			last[e.Agent] = e.From.Epoch
		}
	}
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
}

func TestAnAgentWithAHandBrokenFileKeepsWorking(t *testing.T) {
	c := newCluster(t)
	a := c.addServer("a", nil)
	files := c.writeAgents(1, a)
	// The witness of I1 only: the file is broken on purpose (I3 is not
	// checked here).
	samp := startEpochSampler(t, files)
	c.start(a)
	c.waitRole(a, "primary", 20*time.Second)
	allAt(t, files, a, 1, 10*time.Second)
	evPath := filepath.Join(c.dir, "events.jsonl")
	ag := start(t, c.dir, "agent0", "agent", "--config", files[0], "--id", "agent0", "--period", "100ms", "--events", evPath)
	id := mustStatus(t, a).FailoverID
	eventually(t, 10*time.Second, "agent obeys a", func() bool { return acceptedFrom(readEvents(t, evPath), id, 1) == 1 })

	// A person breaks the file by hand.
	good, _ := os.ReadFile(files[0])
	if err := os.WriteFile(files[0], []byte("stomp_interface: [oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := len(readEvents(t, evPath))
	eventually(t, 10*time.Second, "agent keeps accepting on its last good config", func() bool {
		evs := readEvents(t, evPath)
		return len(evs) >= n+3 && evs[len(evs)-1].Accepted
	})
	eventually(t, 5*time.Second, "one clear log line about the bad file", func() bool {
		return strings.Contains(ag.logText(), "ignoring a bad address.yaml")
	})
	if err := os.WriteFile(files[0], good, 0o644); err != nil {
		t.Fatal(err)
	}
	checkI1(t, readEvents(t, evPath), samp, agentFiles(files))
}

// acceptedFrom counts the distinct agents that accepted a command from id@epoch.
func acceptedFrom(evs []event, id string, epoch uint64) int {
	agents := map[string]bool{}
	for _, e := range evs {
		if e.Accepted && e.From.ID == id && e.From.Epoch == epoch {
			agents[e.Agent] = true
		}
	}
	return len(agents)
}

func mustStatus(t testing.TB, s *server) status {
	t.Helper()
	st, err := getStatus(s.admin)
	if err != nil {
		t.Fatalf("status of %s: %v", s.name, err)
	}
	return st
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }
