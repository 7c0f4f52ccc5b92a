package backup

import (
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
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
	return TakeoverConfig{Store: failoverid.NewStore(dir, failoverid.State{}, failoverid.StoreOptions{}), Node: "b", ID: self, LocationFile: loc, RewriteAgents: rewrite, Log: log,
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
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 2}, failoverid.StoreOptions{})
	from := &failoverid.Peer{Node: "a", FailoverID: prim, Epoch: 7}
	if _, err := RunTakeover(context.Background(), cfg, "failover", from, 7); err != nil {
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
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 4}, failoverid.StoreOptions{})
	if _, err := RunTakeover(ctx, cfg, "failover", nil, 0); err == nil {
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
	cfg.Store = failoverid.NewStore(dir, disk, failoverid.StoreOptions{})
	if _, err := RunTakeover(context.Background(), cfg, "failover", nil, 9); err != nil {
		t.Fatal(err)
	}
	disk = cfg.Store.Get()
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
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 3, Takeover: &failoverid.Journal{Epoch: 3, Step: failoverid.StepAgentsRewritten}}, failoverid.StoreOptions{})
	j, err := RunTakeover(context.Background(), cfg, "failover", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if j.Step != failoverid.StepLocationDormant || cfg.Store.Get().Takeover.Step != failoverid.StepLocationDormant {
		t.Fatal(j.Step)
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

func TestAnOperatorsChangeDuringTheHookIsKept(t *testing.T) {
	dir := t.TempDir()
	cfg := takeoverCfg(t, dir, nil)
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 1}, failoverid.StoreOptions{})
	cfg.BeforeHook = "sleep"
	cfg.RunHook = func(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
		// "tandem maintenance on" while before_takeover runs.
		_, err := cfg.Store.Update(func(s *failoverid.State) error { s.Maintenance = true; return nil })
		return err
	}
	if _, err := RunTakeover(context.Background(), cfg, "failover", nil, 1); err != nil {
		t.Fatal(err)
	}
	disk, err := failoverid.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if disk.Epoch != 2 || disk.Takeover == nil || !disk.Maintenance {
		t.Fatalf("on disk after the takeover: epoch %d journal %+v maintenance %v; want 2, kept, true", disk.Epoch, disk.Takeover, disk.Maintenance)
	}
}

func TestABeforeHookKilledBySignalIsNotJournaled(t *testing.T) {
	dir := t.TempDir()
	cfg := takeoverCfg(t, dir, nil)
	cfg.BeforeHook = "kill -TERM $$"
	var journaled []string
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 1}, failoverid.StoreOptions{Save: func(d string, s failoverid.State) error {
		if s.Takeover != nil {
			journaled = append(journaled, s.Takeover.Step)
		}
		return failoverid.SaveState(d, s)
	}})
	if _, err := RunTakeover(context.Background(), cfg, "failover", nil, 1); err != nil {
		t.Fatal(err)
	}
	for _, st := range journaled {
		if st == failoverid.StepBeforeHook {
			t.Fatalf("a hook killed by SIGTERM was journaled as done: %v", journaled)
		}
	}
}

func TestACancelledBeforeHookIsNotJournaled(t *testing.T) {
	dir := t.TempDir()
	cfg := takeoverCfg(t, dir, nil)
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 1}, failoverid.StoreOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cfg.RunHook = func(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
		cancel() // SIGTERM of the node while the hook runs
		return ctx.Err()
	}
	if _, err := RunTakeover(ctx, cfg, "failover", nil, 1); err == nil {
		t.Fatal("want the stopped takeover to fail")
	}
	if st := cfg.Store.Get(); st.Takeover == nil || st.Takeover.Step != failoverid.StepEpochPersisted {
		t.Fatalf("journal %+v: the hook must run again on resume", st.Takeover)
	}
}

func TestAReadOnlyDataDirStopsTheTakeoverBeforeAnyAgent(t *testing.T) {
	dir := t.TempDir()
	rewrote := false
	cfg := takeoverCfg(t, dir, func(context.Context, uint64) { rewrote = true })
	cfg.BeforeHook = ""
	// The disk turns read-only right after the epoch is persisted (as root:
	// a read-only bind mount of the data dir; otherwise mode 0500).
	cfg.Store = failoverid.NewStore(dir, failoverid.State{Epoch: 1}, failoverid.StoreOptions{Save: func(d string, s failoverid.State) error {
		if err := failoverid.SaveState(d, s); err != nil {
			return err
		}
		makeReadOnly(t, d)
		return nil
	}})
	_, err := RunTakeover(context.Background(), cfg, "failover", nil, 1)
	if !errors.Is(err, failoverid.ErrNotWritable) || rewrote {
		t.Fatalf("err %v, rewrote %v: a takeover must not repoint agents when the data dir is read-only", err, rewrote)
	}
}

func makeReadOnly(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		return
	}
	if out, err := exec.Command("mount", "--bind", dir, dir).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount %s read-only here (%v: %s)", dir, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	if out, err := exec.Command("mount", "-o", "remount,ro,bind", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount %s read-only here (%v: %s)", dir, err, out)
	}
}

func TestAnExhaustedEpochRefusesTheTakeover(t *testing.T) {
	dir := t.TempDir()
	rewrote := false
	cfg := takeoverCfg(t, dir, func(context.Context, uint64) { rewrote = true })
	if _, err := RunTakeover(context.Background(), cfg, "failover", nil, math.MaxUint64); !errors.Is(err, failoverid.ErrEpochExhausted) || rewrote {
		t.Fatalf("err %v rewrote %v", err, rewrote)
	}
	if st := cfg.Store.Get(); st.Epoch != 0 || st.Takeover != nil {
		t.Fatalf("state %+v", st)
	}
}
