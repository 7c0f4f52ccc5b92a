package integration

import (
	"testing"

	"github.com/tandem-ha/tandem/internal/testbrokers"
)

// extBroker is a rig's external heartbeat broker: one newBroker started
// (ActiveMQ or RabbitMQ, see internal/testbrokers), or a standalone tandem
// broker the test runs itself (Broker nil).
type extBroker struct {
	*testbrokers.Broker
	kind  string
	addr  string
	vhost string // RabbitMQ: "/"
}

// newBroker starts a private broker of kind ("activemq" or "rabbitmq")
// that lives until t ends.
func newBroker(t testing.TB, kind string) *extBroker {
	t.Helper()
	b := testbrokers.Start(t, kind)
	return &extBroker{Broker: b, kind: kind, addr: b.Addr(), vhost: b.VHost()}
}

// stompPing does one STOMP CONNECT/DISCONNECT.
func stompPing(addr string) error { return testbrokers.Ping(addr) }

func mustOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
