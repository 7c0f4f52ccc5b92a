package backup

import (
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/protocol"
)

const (
	self = "bbbbbbbb-0000-4000-8000-000000000000"
	prim = "aaaaaaaa-0000-4000-8000-000000000000"
	othr = "cccccccc-0000-4000-8000-000000000000"
)

var t0 = time.Unix(1_700_000_000, 0)

func hb(id string, epoch, seq uint64) protocol.Envelope {
	return protocol.Envelope{FailoverID: id, Epoch: epoch, Seq: seq, Node: "n-" + id[:1]}
}

// step is one input to the detector at an offset from t0, and the action
// expected back.
type step struct {
	at     time.Duration
	hb     *protocol.Envelope // nil: a Tick
	maint  *bool
	want   Action
	reason string // substring of the reason, optional
}

func on() *bool                                { b := true; return &b }
func off() *bool                               { b := false; return &b }
func h(e protocol.Envelope) *protocol.Envelope { return &e }

func run(t *testing.T, steps []step) *Detector {
	t.Helper()
	return runWith(t, DetectorConfig{Window: 500 * time.Millisecond, Period: 100 * time.Millisecond, Self: self, Heard: true}, steps)
}

func runWith(t *testing.T, cfg DetectorConfig, steps []step) *Detector {
	t.Helper()
	d := NewDetector(cfg, t0)
	for i, s := range steps {
		now := t0.Add(s.at)
		var got Decision
		switch {
		case s.maint != nil:
			got = d.SetMaintenance(*s.maint, now)
		case s.hb != nil:
			got = d.Observe(*s.hb, now)
		default:
			got = d.Tick(now)
		}
		if got.Action != s.want || !strings.Contains(got.Reason, s.reason) {
			t.Fatalf("step %d (at %v): got %v %q, want %v containing %q", i, s.at, got.Action, got.Reason, s.want, s.reason)
		}
	}
	return d
}

// ticks returns Tick steps every 100ms in [from, to) expecting None.
func ticks(from, to time.Duration) []step {
	var s []step
	for at := from; at < to; at += 100 * time.Millisecond {
		s = append(s, step{at: at, want: None})
	}
	return s
}

func cat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestSilenceOfAWindowTakesOver(t *testing.T) {
	run(t, cat(
		[]step{{at: 50 * time.Millisecond, hb: h(hb(prim, 1, 1)), want: None}},
		ticks(100*time.Millisecond, 550*time.Millisecond),
		[]step{{at: 550 * time.Millisecond, want: Takeover, reason: "no heartbeat from primary n-a"}},
		// A decision is made once.
		[]step{{at: 650 * time.Millisecond, want: None}},
	))
}

// A primary heard in an earlier run (state.json) that stays silent is
// taken over from after a window: the backup restarted while it was dead.
func TestAPrimaryHeardBeforeIsTakenOverFromAfterAWindow(t *testing.T) {
	run(t, cat(ticks(100*time.Millisecond, 500*time.Millisecond), []step{{at: 500 * time.Millisecond, want: Takeover, reason: "the primary"}}))
}

// A backup that never heard a valid heartbeat of its primary (a typo in
// primary_location, another group key) never takes over by itself: it
// says so once, and takes over only after it has heard the primary and
// the primary went silent for a window.
func TestAPrimaryNeverHeardIsNotTakenOverFrom(t *testing.T) {
	cfg := DetectorConfig{Window: 500 * time.Millisecond, Period: 100 * time.Millisecond, Self: self}
	runWith(t, cfg, cat(
		ticks(100*time.Millisecond, 500*time.Millisecond),
		[]step{{at: 500 * time.Millisecond, want: NeverHeard, reason: "none was ever heard"}},
		ticks(600*time.Millisecond, 5*time.Second), // said once; still no takeover
		[]step{{at: 5 * time.Second, hb: h(hb(prim, 1, 1)), want: None}},
		ticks(5100*time.Millisecond, 5500*time.Millisecond),
		[]step{{at: 5500 * time.Millisecond, want: Takeover, reason: "no heartbeat from primary n-a"}},
	))
}

func TestHeartbeatsWithinTheWindowNeverTakeOver(t *testing.T) {
	var s []step
	seq := uint64(1)
	// Heartbeats every 400ms (just inside the 500ms window) for 10 s.
	for at := time.Duration(0); at < 10*time.Second; at += 100 * time.Millisecond {
		if at%(400*time.Millisecond) == 0 {
			s = append(s, step{at: at, hb: h(hb(prim, 1, seq)), want: None})
			seq++
		}
		s = append(s, step{at: at + time.Millisecond, want: None})
	}
	run(t, s)
}

func TestDuplicateAndReorderedHeartbeatsDoNotResetTheWindow(t *testing.T) {
	run(t, []step{
		{at: 0, hb: h(hb(prim, 1, 5)), want: None},
		{at: 200 * time.Millisecond, hb: h(hb(prim, 1, 5)), want: Ignored, reason: "duplicate"},
		{at: 300 * time.Millisecond, hb: h(hb(prim, 1, 4)), want: Ignored, reason: "reordered"},
		{at: 400 * time.Millisecond, want: None},
		{at: 500 * time.Millisecond, want: Takeover},
	})
}

func TestStaleEpochAndUnknownServerAreIgnored(t *testing.T) {
	d := run(t, []step{
		{at: 0, hb: h(hb(prim, 3, 1)), want: None},
		{at: 100 * time.Millisecond, hb: h(hb(prim, 2, 9)), want: Ignored, reason: "stale epoch"},
		{at: 200 * time.Millisecond, hb: h(hb(othr, 3, 1)), want: Ignored, reason: "unknown server"},
		{at: 300 * time.Millisecond, hb: h(hb(othr, 1, 1)), want: Ignored, reason: "unknown server"},
		{at: 400 * time.Millisecond, hb: h(hb(self, 9, 1)), want: Ignored, reason: "own"},
		{at: 500 * time.Millisecond, want: Takeover},
	})
	if d.SeenEpoch() != 3 {
		t.Fatalf("seen epoch %d, want 3 (own echoes do not count)", d.SeenEpoch())
	}
}

func TestAHigherEpochFromANewServerIsTheNewPrimary(t *testing.T) {
	d := run(t, []step{
		{at: 0, hb: h(hb(prim, 1, 1)), want: None},
		{at: 300 * time.Millisecond, hb: h(hb(othr, 2, 1)), want: None},
		{at: 700 * time.Millisecond, want: None},
		{at: 800 * time.Millisecond, want: Takeover},
	})
	if p := d.Primary(); p.FailoverID != othr || p.Epoch != 2 || d.SeenEpoch() != 2 {
		t.Fatalf("primary %+v seen %d", p, d.SeenEpoch())
	}
}

func TestOwnStallRestartsTheWindow(t *testing.T) {
	// The backup's loop sleeps 3 s (SIGSTOP): more than max(2s, 2×period).
	run(t, []step{
		{at: 0, hb: h(hb(prim, 1, 1)), want: None},
		{at: 100 * time.Millisecond, want: None},
		{at: 3100 * time.Millisecond, want: WindowRestarted, reason: "backup stalled"},
		{at: 3200 * time.Millisecond, want: None},
		{at: 3500 * time.Millisecond, want: None},
		{at: 3600 * time.Millisecond, want: Takeover},
	})
}

func TestLateButNotStalledTickStillTakesOver(t *testing.T) {
	// A 1.9 s gap is below the 2 s stall threshold: the primary is blamed.
	run(t, []step{
		{at: 0, hb: h(hb(prim, 1, 1)), want: None},
		{at: 1900 * time.Millisecond, want: Takeover},
	})
}

func TestStallThresholdScalesWithPeriod(t *testing.T) {
	c := DetectorConfig{Period: 10 * time.Second}
	if c.StallThreshold() != 20*time.Second {
		t.Fatal(c.StallThreshold())
	}
	c.Period = 100 * time.Millisecond
	if c.StallThreshold() != 2*time.Second {
		t.Fatal(c.StallThreshold())
	}
}

func TestMaintenancePausesAndResumingRestartsTheWindow(t *testing.T) {
	run(t, cat(
		[]step{{at: 0, maint: on(), want: None}},
		ticks(100*time.Millisecond, 3*time.Second),
		[]step{{at: 3 * time.Second, maint: off(), want: WindowRestarted, reason: "maintenance ended"}},
		ticks(3100*time.Millisecond, 3500*time.Millisecond),
		[]step{{at: 3500 * time.Millisecond, want: Takeover}},
	))
}

func TestHandoverToSelfTakesOverAtOnceEvenInMaintenance(t *testing.T) {
	e := hb(prim, 4, 7)
	e.HandoverTo = self
	other := hb(prim, 4, 6)
	other.HandoverTo = othr
	run(t, []step{
		{at: 0, maint: on(), want: None},
		{at: 10 * time.Millisecond, hb: h(other), want: None},
		{at: 20 * time.Millisecond, hb: h(e), want: Takeover, reason: "switchover"},
		{at: 30 * time.Millisecond, want: None},
	})
}

func TestSeedKeepsThePrimaryKnownAcrossRestarts(t *testing.T) {
	d := NewDetector(DetectorConfig{Window: time.Second, Period: 100 * time.Millisecond, Self: self}, t0)
	d.Seed(PrimaryView{Node: "a", FailoverID: prim, Epoch: 5, Seq: 99})
	if got := d.Observe(hb(othr, 4, 1), t0); got.Action != Ignored {
		t.Fatalf("lower-epoch stranger after seed: %v", got)
	}
	// The seeded seq is forgotten: a restarted primary's seq counts.
	if got := d.Observe(hb(prim, 5, 1), t0); got.Action != None {
		t.Fatalf("known primary after seed: %v", got)
	}
	if d.SeenEpoch() != 5 {
		t.Fatal(d.SeenEpoch())
	}
}

func TestMaintenanceAnnouncedByThePrimaryPausesTakeover(t *testing.T) {
	m := hb(prim, 1, 2)
	m.Maintenance = true
	d := run(t, cat(
		[]step{{at: 0, hb: h(hb(prim, 1, 1)), want: None}, {at: 10 * time.Millisecond, hb: h(m), want: None}},
		ticks(100*time.Millisecond, 5*time.Second), // the primary went quiet while in maintenance
	))
	if !d.Maintenance() {
		t.Fatal("maintenance not reported")
	}
	// The primary leaves maintenance: the window counts from its heartbeat.
	if got := d.Observe(hb(prim, 1, 3), t0.Add(5*time.Second)); got.Action != None {
		t.Fatal(got)
	}
	if got := d.Tick(t0.Add(5400 * time.Millisecond)); got.Action != None {
		t.Fatal(got)
	}
	if got := d.Tick(t0.Add(5500 * time.Millisecond)); got.Action != Takeover {
		t.Fatal(got)
	}
}

func TestMaintenanceOffOnTheBackupOverridesTheDeadPrimarysAnnouncement(t *testing.T) {
	m := hb(prim, 1, 1)
	m.Maintenance = true
	d := NewDetector(DetectorConfig{Window: 500 * time.Millisecond, Period: 100 * time.Millisecond, Self: self}, t0)
	d.Observe(m, t0)
	for at := 100 * time.Millisecond; at < 3*time.Second; at += 100 * time.Millisecond {
		if got := d.Tick(t0.Add(at)); got.Action != None {
			t.Fatalf("at %v: %v", at, got)
		}
	}
	if !d.Maintenance() {
		t.Fatal("the primary's maintenance is not reported")
	}
	if got := d.SetMaintenance(false, t0.Add(3*time.Second)); got.Action != WindowRestarted || d.Maintenance() {
		t.Fatalf("off: %v, maintenance %v", got, d.Maintenance())
	}
	if got := d.Tick(t0.Add(3500 * time.Millisecond)); got.Action != Takeover {
		t.Fatalf("after maintenance off the silent primary must be taken over: %v", got)
	}
}
