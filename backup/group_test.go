package backup

import (
	"testing"
	"time"
)

// The group tests use Window 500 ms, Period 100 ms: Stagger is
// 2 × 100 ms + 250 ms = 450 ms.
func groupDetector(prio int) *Detector {
	cfg := DetectorConfig{Window: 500 * time.Millisecond, Period: 100 * time.Millisecond, ReplyPeriod: time.Second, Self: self, Heard: true, Priority: prio}
	d := NewDetector(cfg, t0)
	d.Observe(hb(prim, 1, 10), t0)
	return d
}

func peer(id string, prio int, seq uint64, seen time.Time) PeerInfo {
	return PeerInfo{Node: "n-" + id[:1], FailoverID: id, Priority: prio, Effective: prio, HeardSeq: seq, Seen: seen}
}

// tickAt ticks d every 10 ms from from to to and returns the first
// non-None action and when it came.
func tickAt(d *Detector, from, to time.Duration) (Action, time.Duration) {
	for at := from; at <= to; at += 10 * time.Millisecond {
		if got := d.Tick(t0.Add(at)); got.Action != None {
			return got.Action, at
		}
	}
	return None, 0
}

func TestElectionTheBestCandidateTakesOverAtTheWindow(t *testing.T) {
	d := groupDetector(150)
	d.ObservePeer(peer(othr, 100, 10, t0))
	if r := d.Rank(t0); r != 0 {
		t.Fatalf("rank %d, want 0", r)
	}
	if a, at := tickAt(d, 10*time.Millisecond, 2*time.Second); a != Takeover || at != 500*time.Millisecond {
		t.Fatalf("got %v at %v, want a takeover at the window (500ms)", a, at)
	}
}

func TestElectionALowerRankWaitsAStaggerPerRank(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peers []PeerInfo
		want  time.Duration
	}{
		{"higher priority", []PeerInfo{peer(othr, 150, 10, t0)}, 950 * time.Millisecond},
		{"equal priority, fresher heartbeat", []PeerInfo{peer(othr, 100, 11, t0)}, 950 * time.Millisecond},
		{"equal priority and heartbeat, lower failover id", []PeerInfo{peer(prim[:8]+"-1"+othr[10:], 100, 10, t0)}, 950 * time.Millisecond},
		{"two above", []PeerInfo{peer(othr, 150, 10, t0), peer("dddddddd-0000-4000-8000-000000000000", 120, 10, t0)}, 1400 * time.Millisecond},
		{"lower priority does not rank", []PeerInfo{peer(othr, 50, 99, t0)}, 500 * time.Millisecond},
		{"an ineligible peer (priority 0) does not rank", []PeerInfo{peer(othr, 0, 10, t0)}, 500 * time.Millisecond},
		{"a peer that never heard the primary does not rank", []PeerInfo{peer(othr, 200, 0, t0)}, 500 * time.Millisecond},
		{"a stale peer does not rank", []PeerInfo{peer(othr, 200, 10, t0.Add(-3*time.Second))}, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := groupDetector(100)
			for _, p := range tc.peers {
				d.ObservePeer(p)
			}
			a, at := tickAt(d, 10*time.Millisecond, 3*time.Second)
			if a != Takeover || at != tc.want {
				t.Fatalf("got %v at %v, want a takeover at %v", a, at, tc.want)
			}
			if dl := d.Deadline(t0); dl.Sub(t0) != tc.want {
				t.Errorf("deadline %v, want %v", dl.Sub(t0), tc.want)
			}
		})
	}
}

func TestElectionHighPeerWithMaintenanceDoesNotRank(t *testing.T) {
	d := groupDetector(100)
	p := peer(othr, 200, 10, t0)
	p.Maintenance = true
	d.ObservePeer(p)
	if r := d.Rank(t0); r != 0 {
		t.Fatalf("rank %d with the only higher peer in maintenance", r)
	}
}

func TestElectionStandsDownOnHearingTheNewPrimary(t *testing.T) {
	d := groupDetector(100)
	d.ObservePeer(peer(othr, 150, 10, t0))
	if a, _ := tickAt(d, 10*time.Millisecond, 700*time.Millisecond); a != None {
		t.Fatalf("rank 1 acted at the window: %v", a)
	}
	// The peer took over: its first heartbeat (not yet echoing our nonce).
	if got := d.Contender("n-c", othr, 2, t0.Add(710*time.Millisecond)); got.Action != WindowRestarted {
		t.Fatalf("contender: %v", got.Action)
	}
	// The same token again (a replay) does not restart the window again.
	if got := d.Contender("n-c", othr, 2, t0.Add(720*time.Millisecond)); got.Action != None {
		t.Fatalf("the same contender twice: %v", got.Action)
	}
	if got := d.Contender("n-x", prim, 1, t0.Add(720*time.Millisecond)); got.Action != None {
		t.Fatalf("the watched primary's own token as contender: %v", got.Action)
	}
	// Window restarted at 710 ms, the peer forgotten (it is the primary now): rank 0.
	if a, at := tickAt(d, 720*time.Millisecond, 3*time.Second); a != Takeover || at != 1210*time.Millisecond {
		t.Fatalf("got %v at %v, want a takeover a window after the stand-down (1210ms)", a, at)
	}
}

func TestElectionNotEligibleNeverTakesOver(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    func() *Detector
	}{
		{"priority 0", func() *Detector {
			d := NewDetector(DetectorConfig{Window: 500 * time.Millisecond, Period: 100 * time.Millisecond, Self: self, Heard: true, Manual: true}, t0)
			d.Observe(hb(prim, 1, 10), t0)
			return d
		}},
		{"effective 0", func() *Detector { d := groupDetector(100); d.SetEffective(0); return d }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.d()
			a, at := tickAt(d, 10*time.Millisecond, 5*time.Second)
			if a != NotEligible || at != 500*time.Millisecond {
				t.Fatalf("got %v at %v, want not-eligible at the window", a, at)
			}
			if a, at := tickAt(d, at+10*time.Millisecond, 10*time.Second); a != None {
				t.Fatalf("then %v at %v, want nothing", a, at)
			}
			if _, ok := d.TakeoverIn(t0.Add(time.Second)); ok {
				t.Error("TakeoverIn promises a takeover")
			}
			// Health comes back: eligible again, takes over at once (the
			// primary is still silent).
			if tc.name == "effective 0" {
				d.SetEffective(100)
				if got := d.Tick(t0.Add(10 * time.Second)); got.Action != Takeover {
					t.Fatalf("after health returned: %v", got.Action)
				}
			}
		})
	}
}

func TestHoldRestartsTheWindow(t *testing.T) {
	d := groupDetector(100)
	for at := 10 * time.Millisecond; at <= 2*time.Second; at += 10 * time.Millisecond {
		d.Hold(t0.Add(at))
		if got := d.Tick(t0.Add(at)); got.Action != None {
			t.Fatalf("held at %v: %v", at, got.Action)
		}
	}
	if a, at := tickAt(d, 2010*time.Millisecond, 4*time.Second); a != Takeover || at != 2500*time.Millisecond {
		t.Fatalf("got %v at %v, want a takeover a window after the hold ended", a, at)
	}
}

func TestSuspectOncePerSilence(t *testing.T) {
	d := groupDetector(100)
	if d.Suspect(t0.Add(200 * time.Millisecond)) {
		t.Fatal("suspect before half the window")
	}
	if !d.Suspect(t0.Add(250*time.Millisecond)) || d.Suspect(t0.Add(300*time.Millisecond)) {
		t.Fatal("want exactly one suspect per silence")
	}
	d.Observe(hb(prim, 1, 11), t0.Add(310*time.Millisecond))
	if !d.Suspect(t0.Add(600 * time.Millisecond)) {
		t.Fatal("a new silence did not suspect again")
	}
}
