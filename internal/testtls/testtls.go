// Package testtls makes throwaway certificates for tests: a private CA and a
// server certificate it signed for the loopback addresses, in memory and as
// PEM files.
package testtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TB is the part of testing.TB this package uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Bundle is a CA and a server certificate it signed for 127.0.0.1, ::1 and
// localhost, valid from an hour ago for a day.
type Bundle struct {
	CA     *x509.Certificate
	Pool   *x509.CertPool // trusts CA
	Server tls.Certificate

	caDER, serverDER []byte
	serverKey        *ecdsa.PrivateKey
}

// New makes a Bundle.
func New(t TB) *Bundle {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatalf("testtls: %v", err)
		}
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tandem test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(err)
	ca, err := x509.ParseCertificate(caDER)
	must(err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "tandem test server"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	must(err)
	leaf, err := x509.ParseCertificate(der)
	must(err)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Bundle{CA: ca, Pool: pool, Server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		caDER: caDER, serverDER: der, serverKey: key}
}

// Files writes the bundle as PEM files in dir: the server certificate, its
// key and the CA certificate, and returns their paths.
func (b *Bundle) Files(t TB, dir string) (cert, key, ca string) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(b.serverKey)
	if err != nil {
		t.Fatalf("testtls: %v", err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatalf("testtls: %v", err)
		}
		return p
	}
	return write("server.pem", "CERTIFICATE", b.serverDER), write("server-key.pem", "EC PRIVATE KEY", keyDER), write("ca.pem", "CERTIFICATE", b.caDER)
}
