package broker

import (
	"context"
	"errors"
	"sync"
)

// Message is one STOMP MESSAGE as tandem sees it: a destination, the custom
// headers tandem put on it (tandem-version, failover-id, epoch, node, ...) and
// a body. Transport headers (message-id, subscription, content-length, ...)
// are not included in Headers.
type Message struct {
	Destination string
	Headers     map[string]string
	Body        []byte
	// Memo, when set, is shared by every receiver of one fanned-out copy
	// of the message (agent.Pool): work that depends only on the message,
	// such as its signature check, is done once for all of them.
	Memo *Memo
}

// Memo is a message's shared results of a few computations (see
// Message.Memo), each under its own key. A nil *Memo computes every time.
type Memo struct {
	mu   sync.RWMutex // thousands of agents read one memo at once
	done []memoEntry
}

type memoEntry struct {
	key any
	val any
	err error
}

// maxMemo bounds the results a memo keeps (a command's signature check, a
// rebind's token check, the decoded headers): a caller with a key beyond
// them computes its own.
const maxMemo = 4

// Do returns f's result for key: computed by the first caller (the others
// with the same key wait for it and reuse it). key must be comparable and
// name everything f depends on besides the message (the verifying keys,
// the destination).
func (m *Memo) Do(key any, f func() error) error {
	_, err := m.Value(key, func() (any, error) { return nil, f() })
	return err
}

// Value is Do for a computation with a result, which the callers share:
// they must not modify it.
func (m *Memo) Value(key any, f func() (any, error)) (any, error) {
	if m == nil {
		return f()
	}
	m.mu.RLock()
	for _, e := range m.done {
		if e.key == key {
			m.mu.RUnlock()
			return e.val, e.err
		}
	}
	m.mu.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.done {
		if e.key == key {
			return e.val, e.err
		}
	}
	v, err := f()
	if len(m.done) < maxMemo {
		m.done = append(m.done, memoEntry{key, v, err})
	}
	return v, err
}

// Bus is the small publish/subscribe seam the rest of tandem uses. The real
// implementation is a Link to a STOMP broker (embedded or external); MemHub
// provides an in-memory one for unit tests.
//
// Implementations never block a publisher because a subscriber is slow, and
// keep subscriptions across reconnects.
type Bus interface {
	// Publish sends one message to a destination. It returns ErrNotConnected
	// (wrapped) while the link is down; it does not queue.
	Publish(ctx context.Context, dest string, headers map[string]string, body []byte) error
	// Subscribe registers interest in dest. Messages arrive on the returned
	// subscription's channel until it is closed or the Bus is closed.
	Subscribe(dest string) (Subscription, error)
	// Close releases the bus and closes every subscription. Safe twice.
	Close() error
}

// Subscription delivers messages for one destination.
type Subscription interface {
	// C delivers messages. It is closed when the subscription or bus closes.
	// A consumer that falls behind loses the oldest messages (counted in
	// Dropped), never stalls the bus.
	C() <-chan Message
	// Dropped counts messages discarded because the consumer was slow.
	Dropped() uint64
	// Close ends the subscription. Safe twice.
	Close() error
}

// Sentinel errors.
var (
	ErrNotConnected = errors.New("broker: not connected")
	ErrClosed       = errors.New("broker: closed")
	// ErrInvalidConfig wraps configuration errors of ServerConfig and
	// LinkConfig; the message names the field.
	ErrInvalidConfig = errors.New("broker: invalid config")
	// ErrFrameTooLarge is why the embedded broker disconnected a client
	// that sent a frame over ServerConfig.MaxFrameSize.
	ErrFrameTooLarge = errors.New("broker: frame too large")
	// ErrCloseTimeout is returned by Close when goroutines did not end in
	// time.
	ErrCloseTimeout = errors.New("broker: close timed out")
)
