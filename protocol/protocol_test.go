package protocol

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	e := Envelope{FailoverID: "aaaaaaaa-0000-4000-8000-000000000000", Epoch: 7, Node: "a", Seq: 42,
		Advertise: "127.0.0.1:61620", PeriodMS: 100, Role: "primary", SentMS: 1700000000000,
		HandoverTo: "bbbbbbbb-0000-4000-8000-000000000000", Maintenance: true, Instance: "i1", StartedMS: 1699999999000,
		Nonce: "n1", Echo: []string{"x", "y"}, FailoverSig: "abcd", Bound: "10.0.0.1:61620"}
	got, err := Decode(e.Headers())
	if err != nil {
		t.Fatal(err)
	}
	e.Version = got.Version
	if !reflect.DeepEqual(got, e) || got.Version == "" {
		t.Fatalf("round trip: %+v != %+v", got, e)
	}
}

func TestDecodeRejectsMissingAndBadHeaders(t *testing.T) {
	good := Envelope{FailoverID: "x", Epoch: 1, Node: "n"}.Headers()
	for _, k := range []string{HVersion, HFailoverID, HEpoch, HNode} {
		h := copyH(good)
		delete(h, k)
		if _, err := Decode(h); !errors.Is(err, ErrMissingHeader) || !strings.Contains(err.Error(), k) {
			t.Errorf("without %s: %v", k, err)
		}
	}
	for k, v := range map[string]string{HEpoch: "-1", HSeq: "x", HPeriodMS: "-5", HSentMS: "1e3", HNode: strings.Repeat("n", 300)} {
		h := copyH(good)
		h[k] = v
		if _, err := Decode(h); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s=%q: %v", k, v, err)
		}
	}
}

func TestSigning(t *testing.T) {
	s := NewSigner([]byte("k1"))
	h := Envelope{FailoverID: "x", Epoch: 1, Node: "n"}.Headers()
	s.Sign("/topic/tandem.heartbeat", h, []byte("body"))
	if err := s.Verify("/topic/tandem.heartbeat", h, []byte("body")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(h map[string]string) (string, []byte){
		"other destination": func(h map[string]string) (string, []byte) { return "/topic/tandem.agent-command", []byte("body") },
		"other body":        func(h map[string]string) (string, []byte) { return "/topic/tandem.heartbeat", []byte("bodY") },
		"raised epoch": func(h map[string]string) (string, []byte) {
			h[HEpoch] = "2"
			return "/topic/tandem.heartbeat", []byte("body")
		},
		"added header": func(h map[string]string) (string, []byte) {
			h[HHandoverTo] = "y"
			return "/topic/tandem.heartbeat", []byte("body")
		},
	}
	for name, mutate := range cases {
		hh := copyH(h)
		dest, body := mutate(hh)
		if err := s.Verify(dest, hh, body); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A header a broker adds on the way (go-stomp's "id") does not break it.
	withID := copyH(h)
	withID["id"] = "sub-1"
	withID["message-id"] = "42"
	if err := s.Verify("/topic/tandem.heartbeat", withID, []byte("body")); err != nil {
		t.Errorf("transport headers broke the signature: %v", err)
	}
	if err := NewSigner([]byte("k2")).Verify("/topic/tandem.heartbeat", h, []byte("body")); !errors.Is(err, ErrBadSignature) {
		t.Errorf("other key: %v", err)
	}
	unsigned := copyH(h)
	delete(unsigned, HSignature)
	if err := s.Verify("/topic/tandem.heartbeat", unsigned, []byte("body")); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	// Without a key nothing is signed and everything passes.
	none := NewSigner(nil)
	hh := copyH(unsigned)
	none.Sign("d", hh, nil)
	if _, ok := hh[HSignature]; ok || none.Verify("d", unsigned, nil) != nil {
		t.Error("a signer without key must not sign or refuse")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("1", "x", "7", "n", "3", "100")
	f.Add("", "", "-1", "", "x", "")
	f.Fuzz(func(t *testing.T, v, id, epoch, node, seq, period string) {
		h := map[string]string{HVersion: v, HFailoverID: id, HEpoch: epoch, HNode: node, HSeq: seq, HPeriodMS: period}
		e, err := Decode(h)
		if err != nil {
			return
		}
		again, err := Decode(e.Headers())
		if err != nil || again.Epoch != e.Epoch || again.Seq != e.Seq || again.FailoverID != e.FailoverID {
			t.Fatalf("re-decode of %+v: %+v %v", e, again, err)
		}
	})
}

func copyH(h map[string]string) map[string]string {
	c := make(map[string]string, len(h))
	for k, v := range h {
		c[k] = v
	}
	return c
}

func TestCloneDetection(t *testing.T) {
	e := Envelope{FailoverID: "x", Instance: "i2", StartedMS: 100}
	if !e.Clone("x", "i1") || e.Clone("x", "i2") || e.Clone("y", "i1") || (Envelope{FailoverID: "x"}).Clone("x", "i1") {
		t.Fatal("clone")
	}
	if !e.StartedBefore(200, "i1") || e.StartedBefore(50, "i1") || !e.StartedBefore(100, "i3") || e.StartedBefore(100, "i1") {
		t.Fatal("started before")
	}
}

func TestGroupSigning(t *testing.T) {
	d := NewDestinations("")
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("agents-shared-secret")
	server := NewGroupSigner(d, Keys{Secret: secret, Private: priv})
	agent := NewGroupSigner(d, Keys{Secret: secret, Public: pub})
	_, otherPriv, _ := GenerateKey()
	stranger := NewGroupSigner(d, Keys{Secret: secret, Private: otherPriv})

	hb := Envelope{FailoverID: "a", Epoch: 3, Node: "a", Seq: 1}.Headers()
	server.Sign(d.Heartbeat, hb, nil)
	if err := agent.Verify(d.Heartbeat, hb, nil); err != nil {
		t.Fatalf("an agent must verify a server's heartbeat: %v", err)
	}
	// An agent holds the secret but not the group key: what it signs on a
	// server destination (a forged command) is refused.
	forged := Envelope{FailoverID: "a", Epoch: 999, Node: "a"}.Headers()
	agent.Sign(d.AgentCommand, forged, nil)
	if err := server.Verify(d.AgentCommand, forged, nil); !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUnsigned) {
		t.Fatalf("a message an agent signed on a server destination: %v, want refused", err)
	}
	// Another group's key is refused.
	hb2 := Envelope{FailoverID: "a", Epoch: 3, Node: "a", Seq: 2}.Headers()
	stranger.Sign(d.Heartbeat, hb2, nil)
	if err := agent.Verify(d.Heartbeat, hb2, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("another key's heartbeat: %v", err)
	}
	// A changed header breaks the signature.
	hb["epoch"] = "4"
	if err := agent.Verify(d.Heartbeat, hb, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered heartbeat: %v", err)
	}
	// Agent status: the HMAC of the secret, which the server checks.
	st := Envelope{FailoverID: "a", Epoch: 3, Node: "agent-1", Role: "agent"}.Headers()
	agent.Sign(d.AgentStatus, st, []byte("{}"))
	if err := server.Verify(d.AgentStatus, st, []byte("{}")); err != nil {
		t.Fatalf("agent status: %v", err)
	}
	// failover_sig: minted by a server, checked by anyone with the public key.
	sig := server.TokenSig("a", 3, "10.0.0.1", 61620)
	if err := agent.VerifyTokenSig(sig, "a", 3, "10.0.0.1", 61620); err != nil {
		t.Fatal(err)
	}
	if err := agent.VerifyTokenSig(sig, "a", 1000, "10.0.0.1", 61620); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a token sig moved to another epoch: %v", err)
	}
	if agent.TokenSig("a", 4, "x", 1) != "" {
		t.Fatal("an agent must not be able to mint a failover_sig")
	}
}

func TestKeyFilesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	pub, priv, _ := GenerateKey()
	pb, _ := EncodePublicKey(pub)
	kb, _ := EncodePrivateKey(priv)
	os.WriteFile(filepath.Join(dir, "signing.pub"), pb, 0o644)
	os.WriteFile(filepath.Join(dir, "signing.key"), kb, 0o600)
	gotPub, err := LoadPublicKey(filepath.Join(dir, "signing.pub"))
	if err != nil || !gotPub.Equal(pub) {
		t.Fatal(err)
	}
	gotPriv, err := LoadPrivateKey(filepath.Join(dir, "signing.key"))
	if err != nil || !gotPriv.Equal(priv) {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "signing.pub")); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), "signing.pub") {
		t.Fatalf("a public key as private: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "junk"), []byte("hello"), 0o600)
	if _, err := LoadPublicKey(filepath.Join(dir, "junk")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("junk: %v", err)
	}
}

// A verdict is kept only for the exact bytes it covered: a changed header
// or signature is checked (and refused) again.
func TestGroupVerdictsAreForTheExactMessage(t *testing.T) {
	d := NewDestinations("")
	pub, priv, _ := GenerateKey()
	server := NewGroupSigner(d, Keys{Private: priv})
	agent := NewGroupSigner(d, Keys{Public: pub})
	h := Envelope{FailoverID: "a", Epoch: 3, Node: "a", Seq: 1}.Headers()
	server.Sign(d.AgentCommand, h, nil)
	for i := 0; i < 3; i++ {
		if err := agent.Verify(d.AgentCommand, h, nil); err != nil {
			t.Fatal(err)
		}
	}
	h2 := map[string]string{}
	for k, v := range h {
		h2[k] = v
	}
	h2[HEpoch] = "999"
	if err := agent.Verify(d.AgentCommand, h2, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a changed header after a cached verdict: %v", err)
	}
	if err := agent.Verify(d.AgentCommand, h, []byte("x")); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a changed body after a cached verdict: %v", err)
	}
}

func TestPriorityHeadersRoundTrip(t *testing.T) {
	in := Envelope{FailoverID: "a", Epoch: 1, Node: "b", Role: "backup", HasPriority: true, Priority: 150, Effective: 75, HeardSeq: 9, Preempt: true}
	out, err := Decode(in.Headers())
	if err != nil {
		t.Fatal(err)
	}
	if !out.HasPriority || out.Priority != 150 || out.Effective != 75 || out.HeardSeq != 9 || !out.Preempt {
		t.Fatalf("decoded %+v", out)
	}
	if p, e := (Envelope{}).Priorities(); p != DefaultPriority || e != DefaultPriority {
		t.Fatalf("absent priorities = %d, %d", p, e)
	}
	for _, bad := range []string{"-1", "256", "x"} {
		h := in.Headers()
		h[HEffective] = bad
		if _, err := Decode(h); err == nil {
			t.Errorf("effective-priority=%q accepted", bad)
		}
	}
}

func TestMembersBody(t *testing.T) {
	in := []Member{{Node: "b", FailoverID: "B", Address: "127.0.0.1:1", Priority: 150, Effective: 150, LastReplyAgeMS: 5}}
	out, err := DecodeMembers(EncodeMembers(in))
	if err != nil || len(out) != 1 || out[0].FailoverID != "b" || out[0].Priority != 150 {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	for _, bad := range []string{`{`, `{"members":[{"failover_id":""}]}`, `{"members":[{"failover_id":"x","priority":300}]}`} {
		if ms, err := DecodeMembers([]byte(bad)); err == nil {
			t.Errorf("%s accepted: %+v", bad, ms)
		}
	}
	if ms, err := DecodeMembers(nil); err != nil || ms != nil {
		t.Errorf("empty body: %v, %v", ms, err)
	}
}
