package backup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

func takeoverCfg(t *testing.T, dir string, rewrite func(ctx context.Context, epoch uint64)) TakeoverConfig {
	log, _ := test.NewNullLogger()
	loc := filepath.Join(dir, "primary_location")
	if err := os.WriteFile(loc, []byte("127.0.0.1:61620\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return TakeoverConfig{DataDir: dir, Node: "b", ID: self, LocationFile: loc, RewriteAgents: rewrite, Log: log,
		BeforeHook: "echo $TANDEM_EPOCH >> " + filepath.Join(dir, "hook.log")}
}

func TestTakeoverPersistsEpochBeforeTouchingAgents(t *testing.T) {
	dir := t.TempDir()
	var seenOnDisk uint64
	cfg := takeoverCfg(t, dir, func(ctx context.Context, epoch uint64) {
		s, err := failoverid.LoadState(dir)
		if err != nil {
			t.Error(err)
		}
		seenOnDisk = s.Epoch
		if epoch != 8 {
			t.Errorf("rewrite epoch %d, want 8", epoch)
		}
	})
	st := failoverid.State{Epoch: 2}
	from := &failoverid.Peer{Node: "a", FailoverID: prim, Epoch: 7}
	if err := RunTakeover(context.Background(), cfg, &st, "failover", from, 7); err != nil {
		t.Fatal(err)
	}
	if seenOnDisk != 8 {
		t.Fatalf("epoch on disk while rewriting = %d, want 8 (max(2,7)+1)", seenOnDisk)
	}
	disk, _ := failoverid.LoadState(dir)
	if disk.Epoch != 8 || disk.Takeover == nil || disk.Takeover.Step != failoverid.StepLocationDormant {
		t.Fatalf("state after takeover: %+v %+v", disk, disk.Takeover)
	}
	if _, err := os.Stat(cfg.LocationFile); !os.IsNotExist(err) {
		t.Fatal("primary_location still present")
	}
	if _, err := os.Stat(cfg.LocationFile + ".dormant"); err != nil {
		t.Fatal("primary_location.dormant missing")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "hook.log"))
	if strings.TrimSpace(string(b)) != "8" {
		t.Fatalf("before_takeover hook saw %q", b)
	}
}

func TestInterruptedTakeoverResumesWithoutANewEpoch(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	cfg := takeoverCfg(t, dir, func(c context.Context, epoch uint64) {
		calls++
		if calls == 1 {
			cancel() // "crash" in the middle of rewriting agents
		}
	})
	st := failoverid.State{Epoch: 4}
	if err := RunTakeover(ctx, cfg, &st, "failover", nil, 0); err == nil {
		t.Fatal("want the interrupted takeover to fail")
	}
	disk, err := failoverid.LoadState(dir)
	if err != nil || disk.Takeover == nil || disk.Takeover.Step != failoverid.StepBeforeHook || disk.Epoch != 5 {
		t.Fatalf("journal after crash: %+v %v", disk, err)
	}
	if _, err := os.Stat(cfg.LocationFile); err != nil {
		t.Fatal("primary_location must stay until agents are rewritten")
	}
	// Restart: resume from the journal on disk, with a higher seen epoch
	// that must not bump the epoch again.
	if err := RunTakeover(context.Background(), cfg, &disk, "failover", nil, 9); err != nil {
		t.Fatal(err)
	}
	if calls != 2 || disk.Epoch != 5 || disk.Takeover.Step != failoverid.StepLocationDormant {
		t.Fatalf("resume: calls=%d state=%+v", calls, disk)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "hook.log"))
	if strings.Count(string(b), "5") != 1 {
		t.Fatalf("before_takeover must run once across the crash, log %q", b)
	}
}

func TestResumeAfterRenameButBeforeJournal(t *testing.T) {
	dir := t.TempDir()
	cfg := takeoverCfg(t, dir, nil)
	// Crash after the rename, before the journal recorded it.
	if err := MakeDormant(cfg.LocationFile); err != nil {
		t.Fatal(err)
	}
	st := failoverid.State{Epoch: 3, Takeover: &failoverid.Journal{Epoch: 3, Step: failoverid.StepAgentsRewritten}}
	if err := RunTakeover(context.Background(), cfg, &st, "failover", nil, 0); err != nil {
		t.Fatal(err)
	}
	if st.Takeover.Step != failoverid.StepLocationDormant {
		t.Fatal(st.Takeover.Step)
	}
}

func TestACloneBackupStartedLaterStops(t *testing.T) {
	hub := broker.NewMemHub()
	log, _ := test.NewNullLogger()
	mk := func(inst string, started int64) *Role {
		return NewRole(RoleConfig{Node: "b", Token: failoverid.Token{ID: self}, Period: 100 * time.Millisecond,
			ReplyPeriod: time.Hour, Window: time.Hour, Dest: protocol.NewDestinations(""), Signer: protocol.NewSigner(nil),
			Log: log, Instance: inst, StartedMS: started}, hub.Client(inst))
	}
	early := mk("i-early", 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	earlyEnd := make(chan End, 1)
	go func() { e, _ := early.Run(ctx); earlyEnd <- e }()
	// Let the early one subscribe and reply before the clone starts.
	time.Sleep(50 * time.Millisecond)
	late := mk("i-late", 2000)
	lateEnd := make(chan End, 1)
	go func() { e, _ := late.Run(ctx); lateEnd <- e }()
	select {
	case e := <-lateEnd:
		if e.Duplicate == "" || !strings.Contains(e.Duplicate, "duplicate failover_id") || e.Takeover {
			t.Fatalf("%+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the later clone did not stop")
	}
	select {
	case e := <-earlyEnd:
		t.Fatalf("the earlier clone stopped: %+v", e)
	case <-time.After(100 * time.Millisecond):
	}
}
