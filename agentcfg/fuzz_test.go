package agentcfg

import (
	"bytes"
	"errors"
	"testing"
)

var fuzzSeeds = []string{
	"",
	"# only a comment\n",
	"stomp_interface: 10.0.0.1\n",
	sample,
	"stomp_interface: h\r\nstomp_port: '61620'\r\nfailover_epoch: \"3\"\r\n# end",
	"{stomp_interface: h, stomp_port: 1, failover_id: " + testID + ", failover_epoch: 2}",
	"stomp_interface:\nstomp_port:\nfailover_id: ~\nfailover_epoch: # c\n",
	"a: &x 1\nstomp_port: *x\nstomp_interface: h\n",
	"\ufeffstomp_interface:\t h\t# t\n",
	"  stomp_interface: a\n  k: [1, {b: c}]\n",
	"stomp_interface: a\nfailover_epoch: 1\nfailover_epoch: 2\n",
	"- a\n",
	"stomp_interface: a\n...\n",
	"stomp_interface: 'it''s'\n",
	"stomp_interface: \"a\\\"b\"\n",
	"stomp_interface: a\u2028b: 1\n",
	"stomp_interface: a\rb: 1\r",
}

var knownErrs = []error{ErrInvalidValue, ErrRequired, ErrSyntax, ErrInvalidUTF8, ErrNotMapping,
	ErrMultipleDocuments, ErrDuplicateKey, ErrUnsupported, ErrBadUpdate, ErrSelfCheck}

func isKnownErr(err error) bool {
	for _, k := range knownErrs {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data)
		if err != nil {
			if !isKnownErr(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if a.StompInterface == "" || !validHost(a.StompInterface) || a.StompPort < 1 || a.StompPort > 65535 {
			t.Fatalf("Parse accepted %+v", a)
		}
		if a.FailoverEpoch != 0 && !a.HasEpoch {
			t.Fatalf("epoch without HasEpoch: %+v", a)
		}
	})
}

func FuzzEdit(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), "10.0.0.2", uint16(61620), uint64(7), false)
		f.Add([]byte(s), "true", uint16(1), uint64(0), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, host string, port uint16, epoch uint64, otherID bool) {
		u := Update{StompInterface: host, StompPort: int(port), FailoverID: testID, Epoch: epoch}
		if otherID {
			u.FailoverID = testID2
		}
		if u.Validate() != nil {
			// Keep the fuzzer on the editor, not on update validation.
			if _, err := Edit(data, u); !errors.Is(err, ErrBadUpdate) {
				t.Fatalf("invalid update %+v accepted: %v", u, err)
			}
			hosts := []string{"10.0.0.2", "opsc-b.example.com", "::1", "true", "123", "h"}
			u.StompInterface = hosts[int(port)%len(hosts)]
			u.StompPort = int(port)%65535 + 1
		}
		out, err := Edit(data, u)
		if err != nil {
			if !isKnownErr(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			if errors.Is(err, ErrSelfCheck) {
				// Allowed (nothing is written), but it must be a real
				// inconsistency: log it so the fuzzer's findings show.
				t.Logf("self-check refused: %v", err)
			}
			return
		}
		a, err := Parse(out)
		if err != nil {
			t.Fatalf("edited result does not parse: %v\n%q", err, out)
		}
		if a.StompInterface != u.StompInterface || a.StompPort != u.StompPort || a.FailoverID != u.FailoverID ||
			!a.HasEpoch || a.FailoverEpoch != u.Epoch {
			t.Fatalf("edited result reads %+v, want %+v", a, u)
		}
		d1, err1 := load(data)
		d2, err2 := load(out)
		if err1 != nil || err2 != nil {
			t.Fatalf("load: %v %v", err1, err2)
		}
		if otherKeys(d1) != otherKeys(d2) {
			t.Fatalf("other keys changed:\n%s\n---\n%s", otherKeys(d1), otherKeys(d2))
		}
		if b, _ := Parse(data); b.StompInterface == u.StompInterface && b.StompPort == u.StompPort &&
			b.FailoverID == u.FailoverID && b.HasEpoch && b.FailoverEpoch == u.Epoch && !bytes.Equal(out, data) {
			t.Fatalf("equal values but bytes changed:\n%q\n%q", data, out)
		}
		again, err := Edit(out, u)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("second edit not identical: %v\n%q\n%q", err, out, again)
		}
	})
}
