package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// BenchmarkFanOutOfARepeatPing is what a fleet's fan-out spends per agent
// on a verified repeat of its server's ping within the ping gap (passed
// over: neither checked nor counted), the bulk of what a 10,000-agent
// fleet's fan-out does while a new primary pings every 100 ms.
func BenchmarkFanOutOfARepeatPing(b *testing.B) {
	const agents = 1000
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	server := protocol.NewGroupSigner(dest, protocol.Keys{Private: priv})
	agentKey := protocol.NewGroupSigner(dest, protocol.Keys{Public: pub})
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	log, _ := test.NewNullLogger()
	servers := "server-b:1002"
	ping := func(seq uint64) broker.Message {
		h := protocol.Envelope{FailoverID: idA, Epoch: 1, Node: "opsc-a", Seq: seq, Role: "primary"}.Headers()
		h[hFailoverServers] = servers
		body := []byte(`{"command":"ping"}`)
		server.Sign(dest.AgentCommand, h, body)
		return broker.Message{Destination: dest.AgentCommand, Headers: h, Body: body, Memo: &broker.Memo{}}
	}
	dir := b.TempDir()
	wants := make([]func(broker.Message) bool, agents)
	first := ping(1)
	for i := range wants {
		path := filepath.Join(dir, fmt.Sprintf("a%d.yaml", i))
		writeFile(b, path, "server-a", 1001, idA, 1)
		a := New(Config{Path: path, ID: path, Period: time.Second, Dest: dest, Signer: agentKey, Clock: clk, Log: log, PingGap: FleetPingGap(time.Second)})
		wants[i] = a.wantsCommand(context.Background(), "server-a:1001", 1)
		if !wants[i](first) {
			b.Fatal("the first ping was not accepted")
		}
	}
	repeat := ping(2)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := repeat
		m.Memo = &broker.Memo{} // each message has its own
		for _, w := range wants {
			if w(m) {
				b.Fatal("a repeat within the gap was passed on")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*agents), "ns/agent")
}
