package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

func TestKeygenWritesAKeyPairAndNeverOverwrites(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	var out, errb bytes.Buffer
	if code := runKeygen([]string{"--out", dir}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	fi, err := os.Stat(filepath.Join(dir, "signing.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing.key: %v %v", fi, err)
	}
	priv, err := protocol.LoadPrivateKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := protocol.LoadPublicKey(filepath.Join(dir, "signing.pub"))
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("signing.pub does not match signing.key: %v", err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "signing.key"))
	errb.Reset()
	if code := runKeygen([]string{"--out", dir}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "not overwriting") {
		t.Fatalf("second keygen: exit %d %q", code, errb.String())
	}
	after, _ := os.ReadFile(filepath.Join(dir, "signing.key"))
	if !bytes.Equal(before, after) {
		t.Fatal("the key was replaced")
	}
}

// Secure by default: a server with neither signing_key nor insecure: true
// exits 2 with one line naming signing_key and tandem keygen, and writes
// nothing.
func TestServerWithoutASigningKeyExits2(t *testing.T) {
	e := newCLIEnv(t, "listen: 127.0.0.1:0\n")
	code, out, errs := runCLI(func(a []string, o, e *bytes.Buffer) int { return runServer(a, o, e) }, "--config", e.cfg)
	if code != exitUsage || out != "" || !strings.Contains(errs, "signing_key") || !strings.Contains(errs, "tandem keygen") {
		t.Fatalf("server: %d %q %q, want exit 2 naming signing_key and tandem keygen", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if cliExists(e.data) {
		t.Fatal("the refused server created its data dir")
	}
}

// `agents repoint` signs what it writes when it can read the group key, and
// `agents list` checks every file's failover_sig: a token nobody signed (an
// agent's owner raised its own epoch) shows as invalid.
func TestRepointSignsAndListChecksSignatures(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	var out, errb bytes.Buffer
	if code := runKeygen([]string{"--out", keys}, &out, &errb); code != exitOK {
		t.Fatal(errb.String())
	}
	e := newCLIEnv(t, "signing_key: "+filepath.Join(keys, "signing.key")+"\n")
	e.node(t, cliTestID, failoverid.State{Epoch: 3, Role: "primary"})
	p := e.writeAgent(t, "a1", "stomp_interface: 10.0.0.1\n")
	code, o, errs := runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.2:61620")
	if code != exitOK {
		t.Fatalf("repoint: %d %s %s", code, o, errs)
	}
	a, err := agentcfg.ReadFile(p)
	if err != nil || a.FailoverSig == "" {
		t.Fatalf("repointed file %+v %v: want a failover_sig", a, err)
	}
	list := func() agentsListing {
		t.Helper()
		code, o, errs := runCLI(agentsCmd, "list", "--config", e.cfg, "--json")
		if code != exitOK {
			t.Fatalf("list: %d %s", code, errs)
		}
		var l agentsListing
		if err := json.Unmarshal([]byte(o), &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := list(); l.Agents[0].Signature != "valid" || l.Unsigned != 0 {
		t.Fatalf("%+v", l)
	}
	b, _ := os.ReadFile(p)
	os.WriteFile(p, bytes.Replace(b, []byte("failover_epoch: 3"), []byte("failover_epoch: 1000"), 1), 0o644)
	if l := list(); l.Agents[0].Signature != "invalid" || l.Unsigned != 1 {
		t.Fatalf("a hand-raised epoch: %+v", l)
	}
}

func TestKeygenIfMissingKeepsAnExistingPair(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	var out, errb bytes.Buffer
	for i := 0; i < 2; i++ {
		if code := runKeygen([]string{"--out", dir, "--if-missing"}, &out, &errb); code != exitOK {
			t.Fatalf("run %d: exit %d: %s", i, code, errb.String())
		}
	}
	if !strings.Contains(out.String(), "kept") {
		t.Fatalf("second run: %q", out.String())
	}
}

// agents list shows the roster's agents on their own hosts (no managed
// file names them).
func TestAgentsListShowsTheRoster(t *testing.T) {
	e := newCLIEnv(t, "insecure: true\n")
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "backup"})
	ro := `{"from":"` + cliOtherID + `","epoch":1,"agents":[{"id":"cassandra-7","path":"/var/lib/datastax-agent/conf/address.yaml","failover_id":"` + cliOtherID + `","epoch":1,"last_seen":"2026-12-01T10:00:00Z"}]}`
	os.WriteFile(filepath.Join(e.data, "roster.json"), []byte(ro), 0o640)
	code, o, errs := runCLI(agentsCmd, "list", "--config", e.cfg, "--json")
	if code != exitOK {
		t.Fatalf("%d %s", code, errs)
	}
	var l agentsListing
	if err := json.Unmarshal([]byte(o), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Remote) != 1 || l.Remote[0].ID != "cassandra-7" || l.Remote[0].BoundEpoch != 1 || !l.Remote[0].FromRoster {
		t.Fatalf("remote %+v", l.Remote)
	}
	code, o, _ = runCLI(agentsCmd, "list", "--config", e.cfg)
	if code != exitOK || !strings.Contains(o, "cassandra-7") || !strings.Contains(o, "agents on their own hosts") {
		t.Fatalf("text: %s", o)
	}
}
