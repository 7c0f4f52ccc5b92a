package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fault suite's own checkers catch what they claim to.

func TestEpochSamplerCatchesI2AndI3(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "address.yaml")
	good := func(epoch string) string {
		return "# DataStax agent address file\nstomp_interface: 127.0.0.1   # the OpsCenter server\nstomp_port: 1\nuse_ssl: 0\n# keep this\nlocal_interface: 10.1.2.0\njmx_port: 7199\nfailover_epoch: " + epoch + "\n"
	}
	write := func(s string) { mustOK(t, os.WriteFile(f, []byte(s), 0o644)) }
	write(good("2"))
	s := startEpochSampler(t, []string{f})
	wait := func() {
		s.mu.Lock()
		n := s.samples
		s.mu.Unlock()
		eventually(t, 5*time.Second, "two more samples", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.samples >= n+2
		})
	}
	wait()
	write(good("1")) // epoch down
	wait()
	write("stomp_interface: 127.0.0.1\n") // truncated
	wait()
	s.halt()
	ft := &fakeTB{TB: t}
	s.check(ft)
	joined := strings.Join(ft.errs, "\n")
	if !strings.Contains(joined, "I2 violated") || !strings.Contains(joined, "I3 violated") {
		t.Fatalf("sampler missed a violation: %v", ft.errs)
	}
}

func TestMonotoneAcceptsCatchesObeyingBoth(t *testing.T) {
	mk := func(agent string, epoch uint64) event {
		var e event
		e.Agent, e.Accepted, e.From.ID, e.From.Epoch = agent, true, "X", epoch
		e.Bound = e.From
		return e
	}
	ft := &fakeTB{TB: t}
	if n := checkMonotoneAccepts(ft, []event{mk("a", 1), mk("b", 2), mk("a", 2), mk("a", 1)}); n != 1 || len(ft.errs) != 1 {
		t.Fatalf("want one violation, got %d: %v", n, ft.errs)
	}
}
