package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// pyStompScript subscribes with python3-stomp (an independent client), sends
// one message with custom headers, prints READY, then prints the first
// message it receives that came from Go as JSON and exits.
const pyStompScript = `
import json, sys, threading, stomp
host, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = threading.Event()
class L(stomp.ConnectionListener):
    def on_message(self, frame):
        if frame.headers.get("from") == "go":
            print(json.dumps({"headers": frame.headers, "body": frame.body}), flush=True)
            got.set()
cls = {"1.1": stomp.Connection11, "1.2": stomp.Connection12}[version]
c = cls([(host, port)], heartbeats=(0, 0))
c.set_listener("", L())
c.connect(wait=True, headers={"host": "/"})
c.subscribe(destination="/topic/tandem.interop", id="1", ack="auto")
c.send(destination="/topic/tandem.interop", body="from python", headers={"from": "python", "epoch": "9"})
print("READY", flush=True)
got.wait(20)
c.disconnect()
`

// TestInteropPythonStomp: the embedded broker with Debian's python3-stomp
// over STOMP 1.1 and 1.2 (skipped when it is not installed).
func TestInteropPythonStomp(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import stomp").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-stomp not installed: apt-get install python3-stomp")
		}
		t.Skip("python3-stomp not installed: apt-get install python3-stomp (CI installs it)")
	}
	s := startTestServer(t, ServerConfig{})
	host, port, _ := strings.Cut(s.Addr(), ":")
	for _, version := range []string{"1.1", "1.2"} {
		t.Run("STOMP"+version, func(t *testing.T) {
			l := dialTest(t, LinkConfig{URL: s.Addr()})
			sub, _ := l.Subscribe("/topic/tandem.interop")
			waitSubscribed(t, s, "/topic/tandem.interop", 1)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "/usr/bin/python3", "-c", pyStompScript, host, port, version)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			lines := bufio.NewScanner(out)
			if !lines.Scan() || lines.Text() != "READY" {
				t.Fatalf("python: %q %s", lines.Text(), stderr.String())
			}
			// Python -> Go.
			m := recvWithin(t, sub, 10*time.Second)
			if string(m.Body) != "from python" || m.Headers["epoch"] != "9" {
				t.Fatalf("from python: %+v", m)
			}
			// Go -> Python, with a header that needs escaping.
			must(t, l.Publish(context.Background(), "/topic/tandem.interop",
				map[string]string{"from": "go", "node": "a:b"}, []byte("hello python")))
			if !lines.Scan() {
				t.Fatalf("no message in python: %s", stderr.String())
			}
			var got struct {
				Headers map[string]string
				Body    string
			}
			must(t, json.Unmarshal(lines.Bytes(), &got))
			if got.Body != "hello python" || got.Headers["node"] != "a:b" {
				t.Fatalf("python got %+v", got)
			}
		})
	}
}
