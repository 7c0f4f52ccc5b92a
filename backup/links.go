package backup

import (
	"context"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/protocol"
)

// Besides its heartbeat channel, a backup of a group listens on its peers'
// embedded brokers (where a peer heartbeats once it took over, and where
// the other backups reply to it), and with an external heartbeat broker on
// its primary's embedded broker (the second path: a broker outage is not a
// dead primary). Links are dialed in the background, one goroutine each,
// owned by the links set and ended by close; what they receive is merged
// into one channel for the role's loop.

// inbound is a message from an extra link.
type inbound struct {
	reply bool // on the reply channel (else the heartbeat channel)
	m     broker.Message
	via   string
}

// links are a backup's extra links.
type links struct {
	ctx  context.Context
	stop context.CancelFunc
	dial func(ctx context.Context, addr string) (broker.Bus, error)
	dest protocol.Destinations
	in   chan inbound

	mu  sync.Mutex
	m   map[string]*extraLink
	wg  sync.WaitGroup
	pwg sync.WaitGroup // publishes in flight
}

type extraLink struct {
	mu  sync.Mutex
	bus broker.Bus
}

func newLinks(ctx context.Context, dial func(context.Context, string) (broker.Bus, error), dest protocol.Destinations) *links {
	ctx, stop := context.WithCancel(ctx)
	return &links{ctx: ctx, stop: stop, dial: dial, dest: dest, in: make(chan inbound, 256), m: map[string]*extraLink{}}
}

// add dials addr (once) and listens there; replies only: listen to the
// heartbeat channel only when heartbeats is set.
func (l *links) add(addr string, heartbeats, replies bool) {
	if l == nil || l.dial == nil || addr == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.m[addr]; ok || len(l.m) >= maxPeers {
		return
	}
	ctx := l.ctx // every link ends with the set (close)
	el := &extraLink{}
	l.m[addr] = el
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		bus, err := l.dial(ctx, addr)
		if err != nil {
			return
		}
		// Closing a link to a frozen broker can block until a timeout: the
		// role's end (a takeover) never waits for it.
		defer func() { go bus.Close() }()
		el.mu.Lock()
		el.bus = bus
		el.mu.Unlock()
		var subs []broker.Subscription
		forward := func(dest string, reply bool) {
			sub, err := bus.Subscribe(dest)
			if err != nil {
				return
			}
			subs = append(subs, sub)
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-ctx.Done():
						return
					case m, ok := <-sub.C():
						if !ok {
							return
						}
						select {
						case l.in <- inbound{reply: reply, m: m, via: addr}:
						case <-ctx.Done():
							return
						}
					}
				}
			}()
		}
		if heartbeats {
			forward(l.dest.Heartbeat, false)
		}
		if replies {
			forward(l.dest.Reply, true)
		}
		<-ctx.Done()
		for _, s := range subs {
			s.Close()
		}
	}()
}

// publish sends a message on every connected extra link, without waiting
// (each send bounded by timeout).
func (l *links) publish(dest string, h map[string]string, body []byte, timeout time.Duration) {
	if l == nil {
		return
	}
	l.mu.Lock()
	var buses []broker.Bus
	for _, el := range l.m {
		el.mu.Lock()
		if el.bus != nil {
			buses = append(buses, el.bus)
		}
		el.mu.Unlock()
	}
	l.mu.Unlock()
	for _, b := range buses {
		l.pwg.Add(1)
		go func(b broker.Bus) {
			defer l.pwg.Done()
			ctx, cancel := context.WithTimeout(l.ctx, timeout)
			defer cancel()
			_ = b.Publish(ctx, dest, h, body)
		}(b)
	}
}

// close ends every link and waits for their goroutines (not for the
// links' own Close, which runs detached).
func (l *links) close() {
	if l == nil {
		return
	}
	l.stop()
	l.pwg.Wait()
	l.wg.Wait()
}
