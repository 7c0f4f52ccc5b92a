package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

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
