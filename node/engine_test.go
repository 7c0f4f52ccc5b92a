package node

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
)

// Defect: `tandem maintenance on` while before_takeover runs rewrote
// state.json from the node's stale copy (epoch 2 → 0, journal gone), and
// the flag was lost afterwards. With one owner of state.json the command is
// applied on top of the journal.
func TestMaintenanceDuringTheTakeoverHookIsAppliedOnTopOfTheJournal(t *testing.T) {
	gate := newHookGate("before_takeover")
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 3,
		configure: func(i int, cfg *config.Config) { cfg.Hooks.BeforeTakeover = "sleep 2" },
		options: func(i int) Options {
			if i == 1 {
				return Options{RunHook: gate.runner(nil)}
			}
			return Options{}
		}})
	c.startPair()
	c.stop(0)
	waitClosed(t, gate.started, "before_takeover to start")

	if err := c.nodes[1].n.SetMaintenance(true); err != nil {
		t.Fatalf("maintenance on during the takeover: %v", err)
	}
	st := c.disk(1)
	if st.Epoch != 2 || st.Takeover == nil || st.Takeover.Epoch != 2 || !st.Maintenance {
		t.Fatalf("state.json after maintenance on during the hook: epoch %d, journal %+v, maintenance %v; want 2, kept, true", st.Epoch, st.Takeover, st.Maintenance)
	}
	close(gate.release)
	c.waitRole(1, RolePrimary)
	deadline := time.Now().Add(10 * time.Second)
	for c.disk(1).Takeover != nil {
		if time.Now().After(deadline) {
			t.Fatal("the takeover journal was never closed")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st := c.disk(1); st.Epoch != 2 || !st.Maintenance || st.Role != "primary" {
		t.Fatalf("state.json after the takeover: %+v; want epoch 2, maintenance kept, role primary", st)
	}
}

// Defect: a new primary fenced while after_takeover runs let the hook run
// on beside on_fenced, and state.json flipped from fenced back to primary.
// Now the role's context ends with the role: the hook is stopped and has
// returned before on_fenced starts, and nothing writes "primary" after.
func TestAFenceStopsAfterTakeoverBeforeOnFencedRuns(t *testing.T) {
	gate := newHookGate("after_takeover")
	var mu sync.Mutex
	var atOnFenced struct {
		called, hookEnded, hookCanceled bool
		diskRole                        string
	}
	var c *cluster
	record := func(name string) {
		if name != "on_fenced" {
			return
		}
		ended, canceled := gate.state()
		st, _ := failoverid.LoadState(c.nodes[1].dir)
		mu.Lock()
		defer mu.Unlock()
		atOnFenced.called, atOnFenced.hookEnded, atOnFenced.hookCanceled, atOnFenced.diskRole = true, ended, canceled, st.Role
	}
	c = makeCluster(t, clusterOptions{nodes: 2, agents: 3,
		configure: func(i int, cfg *config.Config) {
			cfg.Hooks.AfterTakeover = "long"
			cfg.Hooks.OnFenced = "page someone"
		},
		options: func(i int) Options {
			if i == 1 {
				return Options{RunHook: gate.runner(record)}
			}
			return Options{}
		}})
	c.startPair()
	c.stop(0)
	waitClosed(t, gate.started, "after_takeover to start")

	// Another server took the files at a higher epoch.
	f := filepath.Join(filepath.Dir(filepath.Dir(c.agents)), "a0", "address.yaml")
	if err := os.WriteFile(f, []byte("stomp_interface: 127.0.0.9\nfailover_id: 0b000000-0000-4000-8000-00000000000f\nfailover_epoch: 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitRole(1, RoleFenced)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		called := atOnFenced.called
		mu.Unlock()
		if called {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("on_fenced never ran")
		}
		time.Sleep(2 * time.Millisecond)
	}
	mu.Lock()
	got := atOnFenced
	mu.Unlock()
	if !got.hookEnded || !got.hookCanceled {
		t.Fatalf("when on_fenced started, after_takeover ended=%v cancelled=%v; want it stopped by the fence first", got.hookEnded, got.hookCanceled)
	}
	if got.diskRole != "fenced" {
		t.Fatalf("state.json role %q when on_fenced ran, want fenced", got.diskRole)
	}
	// Stop the node: every goroutine of the node has ended when Run
	// returns, so whatever the old term could still write is written.
	c.stop(1)
	st := c.disk(1)
	if st.Role != "fenced" || st.FencedBy == nil || st.FencedBy.Epoch != 9 || st.Takeover != nil {
		t.Fatalf("state.json after the fence: %+v (journal %+v); want fenced by epoch 9, no journal", st, st.Takeover)
	}
}

// Defect: a fresh pair started at the same time with no primary_location
// on either side split 8,000 agent files between two primaries at epoch 1,
// for good. Tokens are totally ordered (an equal epoch broken by failover
// id): however the start races, exactly one ends primary — the other is
// fenced, or refused to start because the files are already claimed — and
// every file ends bound to the primary.
func TestTwoPrimariesAtOneEpochEndWithExactlyOneFenced(t *testing.T) {
	const files = 400
	for round := 0; round < 5; round++ {
		c := makeCluster(t, clusterOptions{nodes: 2, agents: files, primaries: 2})
		c.launch(0)
		c.launch(1)
		deadline := time.Now().Add(10 * time.Second)
		primaryAt := -1
		for primaryAt < 0 {
			var roles [2]string
			for i := range roles {
				roles[i] = c.nodes[i].n.Status().Role
				if err, done := c.exited(i); done {
					if !errors.Is(err, ErrFenced) {
						t.Fatalf("n%d exited with %v", i, err)
					}
					roles[i] = "refused"
				}
			}
			switch {
			case roles[0] == "primary" && (roles[1] == "fenced" || roles[1] == "refused"):
				primaryAt = 0
			case roles[1] == "primary" && (roles[0] == "fenced" || roles[0] == "refused"):
				primaryAt = 1
			case time.Now().After(deadline):
				t.Fatalf("round %d: roles %v: want exactly one primary", round, roles)
			default:
				time.Sleep(2 * time.Millisecond)
			}
		}
		w := c.nodes[primaryAt].n.Status()
		deadline = time.Now().Add(10 * time.Second)
		for {
			bound, other := c.boundTo(w.FailoverID)
			if other == 0 && bound == files {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d files bound to the primary, %d elsewhere", round, bound, other)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if s := c.nodes[primaryAt].n.Status(); s.Role != "primary" {
			t.Fatalf("round %d: the primary became %s", round, s.Role)
		}
		c.stopAll()
	}
}
