package broker

import (
	"sync"
	"sync/atomic"
)

// DropBuffer is a bounded channel whose writer never blocks: when the channel
// is full the oldest message is taken out and counted as dropped. Writers are
// serialised by mu; the reader receives from C directly. It backs every
// Subscription here, and agent's pool uses it for each agent's share of a
// shared subscription.
type DropBuffer struct {
	mu      sync.Mutex
	ch      chan Message
	closed  bool
	dropped atomic.Uint64
}

// NewDropBuffer makes a DropBuffer of size messages (DefaultBufferSize if
// size <= 0).
func NewDropBuffer(size int) *DropBuffer {
	if size <= 0 {
		size = DefaultBufferSize
	}
	return &DropBuffer{ch: make(chan Message, size)}
}

// Push adds m, discarding the oldest buffered message if the buffer is full.
// It returns false if the buffer is closed.
func (b *DropBuffer) Push(m Message) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	for {
		select {
		case b.ch <- m:
			return true
		default:
		}
		select {
		case <-b.ch:
			b.dropped.Add(1)
		default:
		}
	}
}

// C is the channel the reader receives from; it is closed by Close.
func (b *DropBuffer) C() <-chan Message { return b.ch }

// Dropped counts the messages lost to a full buffer.
func (b *DropBuffer) Dropped() uint64 { return b.dropped.Load() }

// Close closes the channel once; it reports whether this call closed it.
func (b *DropBuffer) Close() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.closed = true
	close(b.ch)
	return true
}
