package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// DefaultBufferSize is the per-subscription buffer used by MemHub and by Link
// when LinkConfig.BufferSize is zero. When a consumer falls this far behind,
// the oldest buffered message is discarded.
const DefaultBufferSize = 1024

// MemHub is an in-memory message bus for unit tests: it behaves like one
// STOMP broker with topic semantics, with fault hooks in the style of raft's
// InmemTransport. Each Client is one endpoint (think: one process's
// connection). A message published by one client reaches every subscriber of
// that exact destination on every client (the publisher's own included) that
// is connected and not partitioned from the publisher.
//
// Delivery is synchronous: when Publish returns, the message is already in
// every receiving subscription's buffer, so tests need no sleeps. Publish never
// blocks on a slow consumer: a full buffer discards its oldest message.
type MemHub struct {
	mu           sync.Mutex
	bufSize      int
	clients      map[*memClient]struct{}
	cuts         map[[2]string]struct{} // unordered pairs, stored sorted
	isolated     map[string]struct{}
	disconnected map[string]struct{}
	drop         func(from string, m Message) bool

	published atomic.Uint64
	delivered atomic.Uint64
	filtered  atomic.Uint64 // dropped by Drop predicate or a partition
}

// NewMemHub returns an empty hub with DefaultBufferSize buffers.
func NewMemHub() *MemHub {
	return &MemHub{
		bufSize:      DefaultBufferSize,
		clients:      make(map[*memClient]struct{}),
		cuts:         make(map[[2]string]struct{}),
		isolated:     make(map[string]struct{}),
		disconnected: make(map[string]struct{}),
	}
}

// SetBufferSize changes the buffer size of subscriptions created afterwards
// (n <= 0 restores DefaultBufferSize). Useful to test slow-consumer drops.
func (h *MemHub) SetBufferSize(n int) {
	if n <= 0 {
		n = DefaultBufferSize
	}
	h.mu.Lock()
	h.bufSize = n
	h.mu.Unlock()
}

// Client returns a new endpoint named name. Fault hooks address endpoints by
// name; several endpoints may share a name (they then share its faults).
func (h *MemHub) Client(name string) Bus {
	c := &memClient{hub: h, name: name, subs: make(map[*memSub]struct{})}
	h.mu.Lock()
	h.clients[c] = struct{}{}
	h.mu.Unlock()
	return c
}

func pairKey(a, b string) [2]string {
	if b < a {
		a, b = b, a
	}
	return [2]string{a, b}
}

// Partition cuts delivery both ways between clients named a and b.
func (h *MemHub) Partition(a, b string) {
	h.mu.Lock()
	h.cuts[pairKey(a, b)] = struct{}{}
	h.mu.Unlock()
}

// Heal undoes Partition(a, b). It does not undo Isolate.
func (h *MemHub) Heal(a, b string) {
	h.mu.Lock()
	delete(h.cuts, pairKey(a, b))
	h.mu.Unlock()
}

// HealAll removes every partition and isolation and clears the Drop
// predicate. It does not reconnect disconnected clients.
func (h *MemHub) HealAll() {
	h.mu.Lock()
	h.cuts = make(map[[2]string]struct{})
	h.isolated = make(map[string]struct{})
	h.drop = nil
	h.mu.Unlock()
}

// Isolate cuts the client named name from every other client, both ways. Its
// own messages still reach its own subscriptions (like a broker on the same
// host). Undo with HealAll.
func (h *MemHub) Isolate(name string) {
	h.mu.Lock()
	h.isolated[name] = struct{}{}
	h.mu.Unlock()
}

// Drop discards every message for which pred returns true (from is the
// publisher's name). The publisher still sees success. nil clears it.
func (h *MemHub) Drop(pred func(from string, m Message) bool) {
	h.mu.Lock()
	h.drop = pred
	h.mu.Unlock()
}

// Disconnect takes the client named name off the bus: its Publish returns
// ErrNotConnected and its subscriptions receive nothing until Reconnect.
// Subscriptions survive, as they do across a Link reconnect.
func (h *MemHub) Disconnect(name string) {
	h.mu.Lock()
	h.disconnected[name] = struct{}{}
	h.mu.Unlock()
}

// Reconnect undoes Disconnect.
func (h *MemHub) Reconnect(name string) {
	h.mu.Lock()
	delete(h.disconnected, name)
	h.mu.Unlock()
}

// MemStats are counters of a MemHub.
type MemStats struct {
	Published uint64 // successful Publish calls
	Delivered uint64 // copies put into subscription buffers
	Filtered  uint64 // copies not delivered because of a partition or Drop
}

// Stats returns the hub's counters.
func (h *MemHub) Stats() MemStats {
	return MemStats{
		Published: h.published.Load(),
		Delivered: h.delivered.Load(),
		Filtered:  h.filtered.Load(),
	}
}

// reachable reports whether a message from a reaches b. Caller holds h.mu.
func (h *MemHub) reachable(a, b string) bool {
	if a == b {
		return true
	}
	if _, ok := h.isolated[a]; ok {
		return false
	}
	if _, ok := h.isolated[b]; ok {
		return false
	}
	_, cut := h.cuts[pairKey(a, b)]
	return !cut
}

func (h *MemHub) publish(from *memClient, m Message) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from.closed {
		return ErrClosed
	}
	if _, down := h.disconnected[from.name]; down {
		return fmt.Errorf("publish to %s from %q: %w", m.Destination, from.name, ErrNotConnected)
	}
	h.published.Add(1)
	if h.drop != nil && h.drop(from.name, cloneMessage(m)) {
		h.filtered.Add(1)
		return nil
	}
	// Holding h.mu for the whole fan-out gives one total order of messages,
	// like a single broker; deliveries never block.
	for c := range h.clients {
		if c.closed {
			continue
		}
		if _, down := h.disconnected[c.name]; down {
			continue
		}
		for s := range c.subs {
			if s.dest != m.Destination {
				continue
			}
			if !h.reachable(from.name, c.name) {
				h.filtered.Add(1)
				continue
			}
			s.push(cloneMessage(m))
			h.delivered.Add(1)
		}
	}
	return nil
}

func cloneMessage(m Message) Message {
	out := Message{Destination: m.Destination}
	if m.Headers != nil {
		out.Headers = make(map[string]string, len(m.Headers))
		for k, v := range m.Headers {
			out.Headers[k] = v
		}
	}
	if m.Body != nil {
		out.Body = append([]byte(nil), m.Body...)
	}
	return out
}

type memClient struct {
	hub    *MemHub
	name   string
	closed bool                 // guarded by hub.mu
	subs   map[*memSub]struct{} // guarded by hub.mu
}

func (c *memClient) Publish(ctx context.Context, dest string, headers map[string]string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.hub.publish(c, Message{Destination: dest, Headers: headers, Body: body})
}

func (c *memClient) Subscribe(dest string) (Subscription, error) {
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	s := newMemSub(dest, h.bufSize)
	s.onClose = func() {
		h.mu.Lock()
		delete(c.subs, s)
		h.mu.Unlock()
	}
	c.subs[s] = struct{}{}
	return s, nil
}

func (c *memClient) Close() error {
	h := c.hub
	h.mu.Lock()
	if c.closed {
		h.mu.Unlock()
		return nil
	}
	c.closed = true
	subs := c.subs
	c.subs = make(map[*memSub]struct{})
	delete(h.clients, c)
	h.mu.Unlock()
	for s := range subs {
		s.closeChan()
	}
	return nil
}

// memSub is a subscription backed by a dropBuffer.
type memSub struct {
	dest    string
	buf     *DropBuffer
	onClose func()
}

func newMemSub(dest string, size int) *memSub {
	return &memSub{dest: dest, buf: NewDropBuffer(size)}
}

func (s *memSub) C() <-chan Message       { return s.buf.C() }
func (s *memSub) Dropped() uint64         { return s.buf.Dropped() }
func (s *memSub) push(m Message)          { s.buf.Push(m) }
func (s *memSub) closeChan() (first bool) { return s.buf.Close() }

func (s *memSub) Close() error {
	if s.closeChan() && s.onClose != nil {
		s.onClose()
	}
	return nil
}
