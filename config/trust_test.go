package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/protocol"
)

func TestAServerNeedsASigningKeyOrInsecure(t *testing.T) {
	c, err := Load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err) // other commands still load it
	}
	_, err = c.GroupKeys()
	if err == nil || !strings.Contains(err.Error(), "signing_key") || !strings.Contains(err.Error(), "tandem keygen") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want one line naming signing_key and tandem keygen, got %v", err)
	}
	c, err = Load(writeConfig(t, minimal+"insecure: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := c.GroupKeys(); err != nil || k.Private != nil {
		t.Fatalf("insecure: %v %v", k, err)
	}
}

func TestSigningKeyIsReadRelativeToTheConfig(t *testing.T) {
	path := writeConfig(t, minimal+"signing_key: keys/signing.key\n")
	dir := filepath.Join(filepath.Dir(path), "keys")
	os.MkdirAll(dir, 0o700)
	_, priv, _ := protocol.GenerateKey()
	b, _ := protocol.EncodePrivateKey(priv)
	os.WriteFile(filepath.Join(dir, "signing.key"), b, 0o600)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.GroupKeys()
	if err != nil || !k.Private.Equal(priv) {
		t.Fatalf("%v", err)
	}
	os.WriteFile(filepath.Join(dir, "signing.key"), []byte("garbage"), 0o600)
	if _, err := c.GroupKeys(); err == nil || !strings.Contains(err.Error(), "signing_key") || !strings.Contains(err.Error(), "signing.key") {
		t.Fatalf("garbage key: %v", err)
	}
}

func TestTrustValidation(t *testing.T) {
	for _, c := range []struct{ extra, key string }{
		{"secret: short\n", "secret"},
		{"insecure: true\nsigning_key: /k\n", "insecure"},
		{"max_agent_file_size: 10\n", "max_agent_file_size"},
	} {
		_, err := Load(writeConfig(t, minimal+c.extra))
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%q: want an error naming %s, got %v", c.extra, c.key, err)
		}
	}
	c, err := Load(writeConfig(t, minimal+"insecure: true\n"))
	if err != nil || c.MaxAgentFileSize != DefaultMaxAgentFileSize {
		t.Fatalf("default max_agent_file_size: %v %v", c, err)
	}
}

func TestAPasswordInABrokerURLIsNeverEchoed(t *testing.T) {
	_, err := Load(writeConfig(t, minimal+"insecure: true\nheartbeat_broker: stomp://admin:hunter2-secret@mq:61613\n"))
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "heartbeat_broker") {
		t.Fatalf("want an error naming heartbeat_broker without the password, got %v", err)
	}
	if got := RedactURL("stomp://u:p%zz@h:1"); strings.Contains(got, "p%zz") {
		t.Fatalf("unparseable URL not redacted: %s", got)
	}
}
