package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
)

// A server's rewrite counts belong to its term as primary: once it is a
// backup (after a switchover) or fenced, its status must say 0 rewritten and
// 0 failed rather than keep reporting a term that has ended.
func TestRewriteCountsEndWithTheTerm(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a1", "a2", "a3"} {
		p := filepath.Join(dir, name, "address.yaml")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		body := "stomp_interface: 127.0.0.1\n"
		if name == "a3" {
			body = "stomp_interface: [broken\n" // cannot be rewritten
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	log := logrus.New()
	log.SetOutput(testWriter{t})
	f := newAgentFiles([]string{filepath.Join(dir, "*", "address.yaml")}, log)
	f.Rewrite(context.Background(), agentcfg.Update{StompInterface: "127.0.0.1", StompPort: 4000, FailoverID: "a9a9a9a9-0000-4000-8000-000000000001", Epoch: 1})
	s := f.Status()
	if s.Managed != 3 || s.Rewritten != 2 || s.Failed != 1 || len(s.FailedFiles) != 1 {
		t.Fatalf("after the takeover rewrite: %+v, want 3 managed, 2 rewritten, 1 failed", s)
	}
	okBefore, failBefore := f.Totals()

	f.EndTerm()
	s = f.Status()
	if s.Managed != 3 || s.Rewritten != 0 || s.Failed != 0 || len(s.FailedFiles) != 0 {
		t.Fatalf("after the term ended: %+v, want 3 managed, 0 rewritten, 0 failed", s)
	}
	if ok, fail := f.Totals(); ok != okBefore || fail != failBefore {
		t.Fatalf("lifetime totals changed: %d/%d -> %d/%d", okBefore, failBefore, ok, fail)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// An idle survey re-reads only the files that changed (inotify): a change
// is seen at the next survey, a new file in a watched directory too, and
// an unchanged file costs no syscall until the next full survey.
func TestSurveysReadOnlyWhatChanged(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name, "address.yaml")
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("a1", "stomp_interface: 127.0.0.1\nfailover_id: a9a9a9a9-0000-4000-8000-000000000001\nfailover_epoch: 1\n")
	p2 := write("a2", "stomp_interface: 127.0.0.1\nfailover_id: a9a9a9a9-0000-4000-8000-000000000001\nfailover_epoch: 1\n")
	log := logrus.New()
	log.SetOutput(testWriter{t})
	f := newAgentFiles([]string{filepath.Join(dir, "*", "address.yaml")}, log)
	defer f.Close()
	if got := f.Highest(context.Background()); got.Epoch != 1 {
		t.Fatalf("first survey: %v", got)
	}
	if f.changes.w == nil {
		t.Skip("no inotify here: every survey is a full one")
	}
	// A change is seen at the next (incremental) survey.
	os.WriteFile(p2, []byte("stomp_interface: 127.0.0.1\nfailover_id: b9b9b9b9-0000-4000-8000-000000000002\nfailover_epoch: 7\n"), 0o644)
	deadline := time.Now().Add(5 * time.Second)
	for f.Highest(context.Background()).Epoch != 7 {
		if time.Now().After(deadline) {
			t.Fatal("a changed file was not seen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, full := f.changes.take(time.Now()); full {
		t.Fatal("an idle survey within fullSurveyEvery was a full one")
	}
	// A file created in a watched directory joins without a full survey.
	os.Remove(filepath.Join(dir, "a1", "address.yaml"))
	p1 := write("a1", "stomp_interface: 127.0.0.1\nfailover_id: c9c9c9c9-0000-4000-8000-000000000003\nfailover_epoch: 9\n")
	deadline = time.Now().Add(5 * time.Second)
	for f.Highest(context.Background()).Epoch != 9 {
		if time.Now().After(deadline) {
			t.Fatalf("%s recreated was not seen", p1)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A large rewrite shows its progress while it runs, and names the files it
// could not rewrite at warning level.
func TestARewriteShowsProgressAndNamesFailures(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 30; i++ {
		p := filepath.Join(dir, fmt.Sprintf("a%02d", i), "address.yaml")
		os.MkdirAll(filepath.Dir(p), 0o755)
		body := "stomp_interface: 127.0.0.1\n"
		if i == 7 {
			body = "stomp_interface: [broken\n"
		}
		os.WriteFile(p, []byte(body), 0o644)
	}
	log, hook := test.NewNullLogger()
	f := newAgentFiles([]string{filepath.Join(dir, "*", "address.yaml")}, log)
	defer f.Close()
	var seen []int
	f.progressHook = func() {
		if s := f.Status(); s.Rewriting != nil {
			seen = append(seen, s.Rewriting.Done)
		}
	}
	f.Rewrite(context.Background(), agentcfg.Update{StompInterface: "127.0.0.1", StompPort: 4000, FailoverID: "a9a9a9a9-0000-4000-8000-000000000001", Epoch: 1})
	if len(seen) == 0 || seen[len(seen)-1] != 30 {
		t.Fatalf("progress seen %v: want it to reach 30", seen)
	}
	if s := f.Status(); s.Rewriting != nil {
		t.Fatalf("progress still shown after the rewrite: %+v", s.Rewriting)
	}
	named := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(fmt.Sprint(e.Data["file"]), "a07") {
			named = true
		}
	}
	if !named {
		t.Fatal("the failed file was not named at warning level")
	}
}
