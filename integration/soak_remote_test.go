package integration

import (
	"os"
	"time"
)

// SOAK_REMOTE=1 runs TestSoak with the agents on their own hosts: their
// files are in no server's agents glob (remoteAgents), so no server can
// rewrite them. Every takeover the faults cause (kill -9, SIGSTOP,
// partition, kill of the backup mid-takeover, switchover) must reach the
// agents as a signed rebind on their standby links, each agent
// compare-and-swapping its own address.yaml; an old primary learns it was
// replaced from the agents' reports on their standby links to it (or its
// backup's heartbeats), not from a file scan. The invariant checker runs
// I1–I3 over the agents' own files.
func soakRemote() bool { return os.Getenv("SOAK_REMOTE") == "1" }

// pairUpRemote is pairUp with remote agents: the files (outside the
// servers' globs) name only a's agents proxy and carry no token; a, the
// fresh primary, rebinds them, and its pings name b (its agents proxy) as
// their failover server.
func (r *rig) pairUpRemote() {
	r.t.Helper()
	r.a = r.addServer("a", nil)
	r.b = r.addServer("b", r.a)
	_, r.files = r.c.remoteAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 20*time.Second)
	r.c.start(r.b)
	r.c.waitRole(r.b, "backup", 20*time.Second)
	r.waitPaired(r.a, r.b, 20*time.Second)
}

// waitStandby waits until every remote agent file names the backup's
// agents proxy in failover_servers: the agents hold a standby link there,
// so a fault right after start reaches them.
func (s *soak) waitStandby() {
	s.t.Helper()
	addr := s.r.ag[s.back.name].addr()
	eventually(s.t, 30*time.Second, "every agent file names "+s.back.name+" ("+addr+") in failover_servers", func() bool {
		for _, f := range s.r.files {
			b, err := os.ReadFile(f)
			if err != nil || !namesFailoverServer(string(b), addr) {
				return false
			}
		}
		return true
	})
}
