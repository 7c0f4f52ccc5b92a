package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestAgentHelpExplainsTheSidecar(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runAgent([]string{"--help"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"--on-rebind CMD", "-on-rebind-timeout", "failover_servers",
		"--config /var/lib/datastax-agent/conf/address.yaml", "--server-key /etc/tandem/signing.pub",
		`--on-rebind "systemctl restart datastax-agent"`, "Without --server-key no rebind"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestAgentRejectsANonPositiveRebindTimeout(t *testing.T) {
	var out, errb bytes.Buffer
	code := runAgent([]string{"--config", "x.yaml", "--on-rebind", "true", "--on-rebind-timeout", "0s"}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "--on-rebind-timeout") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}
