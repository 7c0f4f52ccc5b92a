package broker

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"

	"github.com/go-stomp/stomp/v3/frame"
)

// Local returns a Bus on the server itself, for the process that embeds
// it: what it publishes is routed as a client's SEND would be, and its
// subscriptions get the messages of their destination from the router
// directly. No frame is encoded or parsed and no socket is crossed. A
// primary's link to its own broker carries every agent's status report (a
// 10,000-agent takeover sends thousands a second): over TCP each one was a
// MESSAGE frame written, read and parsed again in the same process.
//
// It keeps the Bus contract: Publish never waits for a subscriber (remote
// copies go to their connections' bounded queues as any message does, and
// a local subscription is a drop-oldest buffer of bufferSize messages,
// DefaultBufferSize if 0 or less), messages carry only custom headers, and
// a subscriber sees the messages of one publisher in order. The bus is
// connected from the start; after the server's Close, Publish fails with
// ErrNotConnected (like a link to a stopped broker) and its subscriptions
// stay open but quiet. Close ends the bus and its subscriptions.
func (s *Server) Local(bufferSize int) Bus {
	return &localBus{srv: s, size: bufferSize, subs: map[*localSub]struct{}{}}
}

type localBus struct {
	srv  *Server
	size int

	mu     sync.Mutex
	closed bool
	subs   map[*localSub]struct{}
}

// localSub is a Local subscription, registered with the server's router.
type localSub struct {
	bus  *localBus
	dest string
	buf  *DropBuffer
}

func (s *localSub) C() <-chan Message { return s.buf.C() }
func (s *localSub) Dropped() uint64   { return s.buf.Dropped() }

// Close unregisters the subscription and closes its channel. Safe twice.
func (s *localSub) Close() error {
	s.bus.srv.unsubscribeLocal(s)
	s.bus.mu.Lock()
	delete(s.bus.subs, s)
	s.bus.mu.Unlock()
	s.buf.Close()
	return nil
}

// Publish routes one message to the destination's subscribers, local and
// remote, as a client's SEND. The headers are sorted as Link sends them;
// values cross unescaped (a remote subscriber's copy is escaped by go-stomp
// when it is written).
func (b *localBus) Publish(ctx context.Context, dest string, headers map[string]string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if b.srv.isClosed() {
		return fmt.Errorf("publish to %s via the embedded broker: %w", dest, ErrNotConnected)
	}
	keys := make([]string, 0, len(headers))
	for k := range headers {
		if !transportHeaders[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	f := frame.New(frame.MESSAGE, frame.Destination, dest, frame.ContentLength, strconv.Itoa(len(body)))
	for _, k := range keys {
		f.Header.Add(k, headers[k])
	}
	f.Body = body
	// Never throttled: a remote subscriber past its backlog limit loses
	// copies (ServerStats.DroppedMessages) or is dropped as slow, as it
	// would for any publisher, but this publisher does not wait for it.
	b.srv.route(f)
	return nil
}

// Subscribe registers a local subscription of dest.
func (b *localBus) Subscribe(dest string) (Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	s := &localSub{bus: b, dest: dest, buf: NewDropBuffer(b.size)}
	b.subs[s] = struct{}{}
	b.srv.subscribeLocal(s)
	return s, nil
}

// Close ends the bus and every subscription it made. Safe twice.
func (b *localBus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*localSub, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) subscribeLocal(sub *localSub) {
	s.topicsMu.Lock()
	m := s.locals[sub.dest]
	if m == nil {
		m = make(map[*localSub]struct{})
		s.locals[sub.dest] = m
	}
	m[sub] = struct{}{}
	s.topicsMu.Unlock()
}

func (s *Server) unsubscribeLocal(sub *localSub) {
	s.topicsMu.Lock()
	if m := s.locals[sub.dest]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(s.locals, sub.dest)
		}
	}
	s.topicsMu.Unlock()
}

// deliverLocal hands f to dest's local subscriptions (the caller holds
// topicsMu for reading). Each gets its own Message: only custom headers,
// the first occurrence of a repeated one winning, as fromStomp does.
func (s *Server) deliverLocal(dest string, f *frame.Frame) {
	subs := s.locals[dest]
	if len(subs) == 0 {
		return
	}
	for sub := range subs {
		m := Message{Destination: dest, Body: f.Body, Headers: make(map[string]string, f.Header.Len())}
		for i := 0; i < f.Header.Len(); i++ {
			k, v := f.Header.GetAt(i)
			if transportHeaders[k] {
				continue
			}
			if _, dup := m.Headers[k]; !dup {
				m.Headers[k] = v
			}
		}
		sub.buf.Push(m)
	}
}
