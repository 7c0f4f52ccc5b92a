package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testtls"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool trusting
// its CA.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	b := testtls.New(t)
	return b.Server, b.Pool
}

func TestServerAndLinkTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	s := startTestServer(t, ServerConfig{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	l := dialTest(t, LinkConfig{URL: "stomp+ssl://" + s.Addr(), TLS: &tls.Config{RootCAs: pool}})
	sub, _ := l.Subscribe("/topic/tls")
	waitSubscribed(t, s, "/topic/tls", 1)
	if err := l.Publish(context.Background(), "/topic/tls", map[string]string{"k": "v"}, []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if m := recvWithin(t, sub, 5*time.Second); string(m.Body) != "secret" || m.Headers["k"] != "v" {
		t.Fatalf("got %+v", m)
	}
	// A plain-text client gets nowhere.
	plain, err := Dial(context.Background(), LinkConfig{URL: s.Addr(), Log: testLog(t), DialTimeout: time.Second, BackoffMin: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if plain.Connected() {
		t.Fatal("plain-text link connected to a TLS broker")
	}
}

// TestServerWriteTimeoutDropsNonReader: a client whose socket stops taking
// bytes is dropped after WriteTimeout even when its backlog is allowed to be
// large.
func TestServerWriteTimeoutDropsNonReader(t *testing.T) {
	s := startTestServer(t, ServerConfig{WriteTimeout: 200 * time.Millisecond, MaxPendingBytes: 256 << 20})
	pub := dialTest(t, LinkConfig{URL: s.Addr()})
	nc, _ := rawConnect(t, s.Addr())
	_ = nc.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := nc.Write([]byte("SUBSCRIBE\nid:1\ndestination:/topic/big\n\n\x00")); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, s, "/topic/big", 1)
	body := make([]byte, 512<<10)
	deadline := time.Now().Add(20 * time.Second)
	for s.Stats().SlowClients == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("non-reader not dropped; stats %+v", s.Stats())
		}
		if err := pub.Publish(context.Background(), "/topic/big", nil, body); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // pace the publisher: this test is about the subscriber
	}
	waitFor(t, 5*time.Second, "connection gone", func() bool { return s.Stats().Connections == 1 })
}

// TestLinkCloseLeavesNoGoroutines covers subscriptions closed before the
// link (background UNSUBSCRIBE without receipt) and links to a dead broker.
func TestLinkCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	s, err := StartServer(ServerConfig{Listen: "127.0.0.1:0", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Dial(context.Background(), LinkConfig{URL: s.Addr(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		sub, _ := l.Subscribe("/topic/x")
		if i%2 == 0 {
			sub.Close()
		}
	}
	dead, _ := Dial(context.Background(), LinkConfig{URL: freeAddr(t), Log: testLog(t)})
	start := time.Now()
	l.Close()
	dead.Close()
	t.Logf("Link.Close took %s", time.Since(start))
	s.Close()
	goroutinesSettle(t, base, 2, 5*time.Second)
}

// TestServerTLSNonReaderDropped: dropping a TLS client that does not read
// must not wait on a close_notify it will never take.
func TestServerTLSNonReaderDropped(t *testing.T) {
	cert, pool := selfSigned(t)
	s := startTestServer(t, ServerConfig{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, MaxPendingBytes: 256 << 10, MaxFrameSize: 64 << 10})
	tc := &tls.Config{RootCAs: pool}
	pub := dialTest(t, LinkConfig{URL: "stomp+ssl://" + s.Addr(), TLS: tc})
	live := dialTest(t, LinkConfig{URL: "stomp+ssl://" + s.Addr(), TLS: tc, BufferSize: 1 << 14})
	ls, _ := live.Subscribe("/topic/t")

	raw, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.(*net.TCPConn).SetReadBuffer(4 << 10)
	nc := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if _, err := nc.Write([]byte("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00SUBSCRIBE\nid:1\ndestination:/topic/t\n\n\x00")); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, s, "/topic/t", 2)
	body := make([]byte, 1024)
	var sent int
	start := time.Now()
	for s.Stats().SlowClients == 0 && time.Since(start) < 10*time.Second {
		for i := 0; i < 20; i++ { // about 2,000 messages/s
			if err := pub.Publish(context.Background(), "/topic/t", nil, body); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.SlowClients != 1 || st.Connections != 3 && st.Connections != 2 {
		t.Fatalf("after %d messages in %s: %+v", sent, time.Since(start), st)
	}
	t.Logf("non-reader dropped after %d messages in %s", sent, time.Since(start))
	must(t, pub.Publish(context.Background(), "/topic/t", map[string]string{"last": "1"}, body))
	sent++
	deadline := time.After(3 * time.Second)
	for got := 0; ; {
		select {
		case m := <-ls.C():
			got++
			if m.Headers["last"] == "1" {
				if got+int(ls.Dropped()) != sent {
					t.Fatalf("live got %d + dropped %d of %d", got, ls.Dropped(), sent)
				}
				return
			}
		case <-deadline:
			t.Fatalf("live subscriber stalled: %d of %d", got, sent)
		}
	}
}
