package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"runtime"
	"testing"
	"time"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tandem-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
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
