package testbrokers

import (
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
)

// BlackHole is a STOMP "broker" that answers CONNECT (declining
// heart-beats) and then never reads again, with a tiny receive buffer: a
// client's writes back up at once, as they do to a broker that froze or
// died with its buffers full.
type BlackHole struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

// StartBlackHole listens on a loopback port; it is killed at the test's end.
func StartBlackHole(t testing.TB) *BlackHole {
	t.Helper()
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &BlackHole{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			go func() {
				// Read the CONNECT frame, answer it, then read nothing.
				one := make([]byte, 1)
				for {
					if _, err := c.Read(one); err != nil {
						return
					}
					if one[0] == 0 {
						break
					}
				}
				_, _ = c.Write([]byte("CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00"))
			}()
		}
	}()
	t.Cleanup(b.Kill)
	return b
}

// Addr is its host:port.
func (b *BlackHole) Addr() string { return b.ln.Addr().String() }

// Kill closes the listener and every connection, as a broker's death does.
func (b *BlackHole) Kill() {
	b.ln.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
}
