package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testtls"
)

// TestTLSPairFailsOver runs a pair whose embedded brokers serve TLS only
// (tls.cert/tls.key, the backup trusting tls.ca), with agents that have
// use_ssl: 1 and trust the same CA: the backup hears the primary over TLS,
// takes over when it is killed, and the agents follow it over TLS.
func TestTLSPairFailsOver(t *testing.T) {
	c := newCluster(t)
	cert, key, ca := testtls.New(t).Files(t, c.dir)
	c.extra = fmt.Sprintf("tls: {cert: %q, key: %q, ca: %q}\n", cert, key, ca)
	a := c.addServer("a", nil)
	b := c.addServer("b", a)
	files := c.writeAgents(3, a)
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(strings.Replace(string(body), "use_ssl: 0", "use_ssl: 1", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startPair(t, c, a, b)
	if url := mustStatus(t, b).HeartbeatChannel.URL; !strings.HasPrefix(url, "stomp+ssl://") {
		t.Fatalf("b's heartbeat channel is %q, want stomp+ssl://", url)
	}
	start(t, c.dir, "fleet", "agent", "--fleet", filepath.Join(c.dir, "agents"), "--period", "200ms", "--ca", ca)
	eventually(t, 20*time.Second, "3 agents connected to a over TLS", func() bool { return boundTo(t, a) == 3 })

	a.p.signal(syscall.SIGKILL)
	c.waitRole(b, "primary", 10*time.Second)
	allAt(t, files, b, 2, 10*time.Second)
	eventually(t, 20*time.Second, "3 agents connected to b over TLS", func() bool { return boundTo(t, b) == 3 })
	for _, f := range files {
		if _, _, _, text := fileFacts(t, f); !strings.Contains(text, "use_ssl: 1") {
			t.Fatalf("%s lost use_ssl: 1:\n%s", f, text)
		}
	}
}
