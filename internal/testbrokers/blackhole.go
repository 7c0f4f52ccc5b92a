package testbrokers

import (
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
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

// Jam fills the link's path to a broker that does not read: it publishes
// big bodies until a publish fails or outlives its context (the writes are
// backed up), then keeps publishing from background goroutines, as a busy
// fleet would, until the returned stop is called.
func Jam(t testing.TB, pub func(ctx context.Context, body []byte) error) (stop func()) {
	t.Helper()
	body := make([]byte, 256<<10)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("could not back up the link")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		err := pub(ctx, body)
		cancel()
		if err != nil || time.Since(start) > 100*time.Millisecond {
			break
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if pub(context.Background(), body[:64<<10]) != nil {
					time.Sleep(time.Millisecond) // pacing only
				}
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}
