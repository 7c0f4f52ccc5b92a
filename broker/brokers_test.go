package broker

import (
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbrokers"
)

// extBroker is a broker process private to this test binary (see
// internal/testbrokers): the embedded broker (a re-executed test binary),
// ActiveMQ or RabbitMQ, with the heart-beat settings links to it use.
type extBroker struct {
	*testbrokers.Broker
	t         testing.TB // the test that last asked for it: start reports there
	hb, hbErr time.Duration
}

// linkHeartBeats: heart-beat interval and HeartBeatError of links to each
// kind. ActiveMQ's heart-beats come up to 2× the interval apart.
var linkHeartBeats = map[string][2]time.Duration{
	"embedded": {500 * time.Millisecond, 500 * time.Millisecond},
	"activemq": {time.Second, 2500 * time.Millisecond},
	"rabbitmq": {time.Second, 2 * time.Second},
}

func (b *extBroker) url() string { return "stomp://" + b.Addr() }

func (b *extBroker) linkConfig() LinkConfig {
	return LinkConfig{URL: b.url(), HeartBeat: b.hb, HeartBeatError: b.hbErr,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond}
}

func (b *extBroker) start()                    { b.Start(b.t) }
func (b *extBroker) stop()                     { b.Stop() }
func (b *extBroker) kill()                     { b.Kill() }
func (b *extBroker) signal(sig syscall.Signal) { b.Signal(sig) }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Brokers are started once per test binary and shared by the contract tests
// and benchmarks; TestMain stops them.
var (
	sharedMu      sync.Mutex
	sharedBrokers = map[string]*extBroker{}
)

// sharedBroker returns the running broker of kind, starting it on first use.
// The broker outlives t; stopSharedBrokers ends it.
func sharedBroker(t testing.TB, kind string) *extBroker {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if b := sharedBrokers[kind]; b != nil {
		b.t = t
		return b
	}
	hb, ok := linkHeartBeats[kind]
	if !ok {
		t.Fatalf("unknown broker %q", kind)
	}
	var tb *testbrokers.Broker
	if kind == "embedded" {
		// In a child process, so it can be frozen and killed like the others.
		tb = testbrokers.NewProcess(t, kind, func(addr string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childModeEnv+"=broker", childArgEnv+"="+addr)
			return cmd
		})
	} else {
		tb = testbrokers.New(t, kind)
	}
	b := &extBroker{Broker: tb, t: t, hb: hb[0], hbErr: hb[1]}
	started := false
	defer func() {
		if !started { // start failed: end what it left, the next caller retries
			b.Close()
		}
	}()
	b.start()
	started = true
	sharedBrokers[kind] = b
	return b
}

func stopSharedBrokers() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	var wg sync.WaitGroup
	for k, b := range sharedBrokers {
		wg.Add(1)
		go func() { defer wg.Done(); b.Close() }()
		delete(sharedBrokers, k)
	}
	wg.Wait()
}
