package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/internal/testports"
)

// Start-time problems are exit 2 with one line naming the key and the file,
// and nothing is created first (failover_id used to be created before the
// port check failed).
func TestServerStartProblemsExit2AndCreateNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := strconv.Itoa(testports.Port(t))
	cases := []struct {
		name, extra, want string
		prepare           func(e cliEnv)
	}{
		{"broker port in use", "insecure: true\nlisten: " + busy.Addr().String() + "\n", "listen " + busy.Addr().String(), nil},
		{"admin port in use", "insecure: true\nlisten: 127.0.0.1:" + free + "\n", "admin " + busy.Addr().String(), func(e cliEnv) {
			b, _ := os.ReadFile(e.cfg)
			os.WriteFile(e.cfg, bytes.Replace(b, []byte("admin: 127.0.0.1:0"), []byte("admin: "+busy.Addr().String()), 1), 0o644)
		}},
		{"data_dir is a file", "insecure: true\nlisten: 127.0.0.1:0\n", "is a file", func(e cliEnv) { os.WriteFile(e.data, []byte("x"), 0o644) }},
		{"event_log directory missing", "insecure: true\nlisten: 127.0.0.1:0\nevent_log: nowhere/events.jsonl\n", "event_log", nil},
		{"primary_location names this server", "insecure: true\nlisten: 127.0.0.1:0\n", "own advertise address", func(e cliEnv) {
			os.MkdirAll(e.data, 0o700)
			os.WriteFile(filepath.Join(e.data, "primary_location"), []byte("10.0.0.2\n"), 0o644)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newCLIEnv(t, c.extra)
			if c.prepare != nil {
				c.prepare(e)
			}
			before := listDir(e.dir)
			code, out, errs := runCLI(func(a []string, o, e *bytes.Buffer) int { return runServer(a, o, e) }, "--config", e.cfg)
			if code != exitUsage || out != "" || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 naming %q", code, errs, c.want)
			}
			cliOneLineErr(t, errs)
			if after := listDir(e.dir); after != before {
				t.Fatalf("the refused start created files:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func listDir(dir string) string {
	var names []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			names = append(names, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return strings.Join(names, " ")
}

// An agent started on a file it cannot use has no last good configuration
// to keep running with: exit 2, one line naming the file.
func TestAgentOnAnInvalidFileExits2(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	os.WriteFile(p, []byte("stomp_interface: [broken\n"), 0o644)
	code, _, errs := runCLI(agentCmd, "--config", p)
	if code != exitUsage || !strings.Contains(errs, p) {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	cliOneLineErr(t, errs)
}
