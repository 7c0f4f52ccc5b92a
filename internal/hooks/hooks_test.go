package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

func TestRunPassesEnvAndLogsOutput(t *testing.T) {
	log, rec := test.NewNullLogger()
	out := filepath.Join(t.TempDir(), "out")
	err := Run(context.Background(), "after_takeover", "echo hello $TANDEM_EPOCH; echo $TANDEM_EPOCH > "+out, 5*time.Second,
		[]string{"TANDEM_EPOCH=7"}, log)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if strings.TrimSpace(string(b)) != "7" {
		t.Fatalf("env not passed: %q", b)
	}
	found := false
	for _, e := range rec.AllEntries() {
		if e.Message == "hello 7" && e.Data["hook"] == "after_takeover" {
			found = true
		}
	}
	if !found {
		t.Fatal("output not logged")
	}
}

func TestRunFailsOnNonZeroExit(t *testing.T) {
	log, _ := test.NewNullLogger()
	if err := Run(context.Background(), "h", "exit 3", time.Second, nil, log); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatal(err)
	}
}

func TestRunKillsTheProcessGroupOnTimeout(t *testing.T) {
	log, _ := test.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	start := time.Now()
	// A child of the shell that would outlive a plain kill of the shell.
	err := Run(context.Background(), "slow", "sleep 30 & sleep 30", 200*time.Millisecond, nil, log)
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("want a timeout error, got %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("timeout not enforced: %v", time.Since(start))
	}
}

func TestEmptyCommandDoesNothing(t *testing.T) {
	log, _ := test.NewNullLogger()
	if err := Run(context.Background(), "h", "", time.Second, nil, log); err != nil {
		t.Fatal(err)
	}
}

func TestAHookKilledByASignalIsNotDone(t *testing.T) {
	log, _ := test.NewNullLogger()
	// The SIGTERM of a service stop reaching the hook's shell.
	err := Run(context.Background(), "before_takeover", "kill -TERM $$; sleep 5", 5*time.Second, nil, log)
	if !errors.Is(err, ErrSignaled) {
		t.Fatalf("want ErrSignaled, got %v", err)
	}
}

func TestCancellingKillsTheGroupAndWaitsForIt(t *testing.T) {
	log, _ := test.NewNullLogger()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, "after_takeover", "sleep 30 & echo $! > "+pidFile+"; wait", 30*time.Second, nil, log)
	}()
	deadline := time.Now().Add(5 * time.Second)
	var pid int
	for pid == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(5 * time.Millisecond)
	}
	if pid == 0 {
		t.Fatal("hook did not start")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrCancelled) {
			t.Fatalf("want ErrCancelled, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The grandchild is gone too (a zombie at most, reaped by init).
	deadline = time.Now().Add(3 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d of the hook's group survived the cancel", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHookOutputIsBounded(t *testing.T) {
	log, rec := test.NewNullLogger()
	// 4 MiB of output: only the last MaxOutput bytes are kept.
	err := Run(context.Background(), "noisy", "head -c 4194304 /dev/zero | tr '\\0' 'x'; echo; echo last-line", 10*time.Second, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	sawLast := false
	for _, e := range rec.AllEntries() {
		total += len(e.Message)
		if e.Message == "last-line" {
			sawLast = true
		}
	}
	if !sawLast || total > 2*MaxOutput {
		t.Fatalf("last line kept: %v, logged %d bytes (cap %d)", sawLast, total, MaxOutput)
	}
}
