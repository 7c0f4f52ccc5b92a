package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
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

// A fleet's agents tick spread over the period, in order; a lone agent at
// once.
func TestFleetPhaseSpreadsTicksOverThePeriod(t *testing.T) {
	const period = time.Second
	if got := fleetPhase(0, 1, period); got != 0 {
		t.Fatalf("lone agent: phase %s", got)
	}
	prev := time.Duration(-1)
	for i := range 1000 {
		p := fleetPhase(i, 1000, period)
		if p <= prev || p < 0 || p >= period {
			t.Fatalf("agent %d of 1000: phase %s after %s (want increasing, within [0, %s))", i, p, prev, period)
		}
		prev = p
	}
	if got := fleetPhase(500, 1000, period); got != period/2 {
		t.Fatalf("the middle agent's phase is %s, want %s", got, period/2)
	}
}

// Only a fleet passes over its servers' repeat pings; a lone agent checks
// and counts every command.
func TestOnlyAFleetHasAPingGap(t *testing.T) {
	if got := fleetPingGap(1, time.Second); got != 0 {
		t.Fatalf("lone agent: ping gap %s, want none", got)
	}
	if got := fleetPingGap(2, time.Second); got != time.Second {
		t.Fatalf("fleet: ping gap %s, want the period", got)
	}
}
