package hooks

import (
	"context"
	"os"
	"path/filepath"
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
