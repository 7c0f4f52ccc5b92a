package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
