package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	e := Envelope{FailoverID: "aaaaaaaa-0000-4000-8000-000000000000", Epoch: 7, Node: "a", Seq: 42,
		Advertise: "127.0.0.1:61620", PeriodMS: 100, Role: "primary", SentMS: 1700000000000,
		HandoverTo: "bbbbbbbb-0000-4000-8000-000000000000", Maintenance: true, Instance: "i1", StartedMS: 1699999999000}
	got, err := Decode(e.Headers())
	if err != nil {
		t.Fatal(err)
	}
	e.Version = got.Version
	if got != e || got.Version == "" {
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
