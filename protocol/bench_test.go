package protocol

import (
	"testing"
)

// BenchmarkGroupSignHeartbeat: what the group key costs a primary per
// heartbeat (sign) and a backup (verify).
//
//	go test -run '^$' -bench Group -benchmem ./protocol
func BenchmarkGroupSignHeartbeat(b *testing.B) {
	d := NewDestinations("")
	pub, priv, _ := GenerateKey()
	server := NewGroupSigner(d, Keys{Private: priv})
	backup := NewGroupSigner(d, Keys{Public: pub})
	env := Envelope{FailoverID: "aaaaaaaa-0000-4000-8000-000000000000", Epoch: 7, Node: "a", Seq: 42, Advertise: "10.0.0.1:61620",
		PeriodMS: 10000, Role: "primary", Instance: "0123456789abcdef", StartedMS: 1, Echo: []string{"fedcba9876543210"}}
	b.Run("sign", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			h := env.Headers()
			server.Sign(d.Heartbeat, h, nil)
		}
	})
	h := env.Headers()
	server.Sign(d.Heartbeat, h, nil)
	b.Run("verify", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fresh := NewGroupSigner(d, Keys{Public: pub}) // no cached verdict
			if err := fresh.Verify(d.Heartbeat, h, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A fleet's agents share one Signer: the same message checked again
	// costs a digest, not a signature check.
	b.Run("verify-again", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := backup.Verify(d.Heartbeat, h, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGroupVerifyTokenSigs10000: a takeover's 10,000 failover_sig
// checks (a survey of 10,000 files, or 10,000 agents' reports).
func BenchmarkGroupVerifyTokenSigs10000(b *testing.B) {
	d := NewDestinations("")
	pub, priv, _ := GenerateKey()
	s := NewGroupSigner(d, Keys{Private: priv})
	sigs := make([]string, 10000)
	for i := range sigs {
		sigs[i] = s.TokenSig("aaaaaaaa-0000-4000-8000-000000000000", 8, "10.0.0.1", 1+i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := NewGroupSigner(d, Keys{Public: pub}) // 10,000 distinct checks, none cached
		for j, sig := range sigs {
			if err := v.VerifyTokenSig(sig, "aaaaaaaa-0000-4000-8000-000000000000", 8, "10.0.0.1", 1+j); err != nil {
				b.Fatal(err)
			}
		}
	}
}
