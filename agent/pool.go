package agent

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
)

// DefaultPoolBuffer is each agent's command buffer in a Pool: an agent reads
// a ping a period, so a small buffer keeps a fleet lean.
const DefaultPoolBuffer = 32

// Pool shares one broker connection per server among the agents of one
// process (tandem agent --fleet): agents whose files name the same
// stomp_interface, stomp_port and use_ssl use one link, with one STOMP
// subscription per destination fanned out to each agent's own buffer.
//
// Each agent keeps its own semantics: it watches its own file, moves to a
// new server on its own, checks every command against its own file (I1),
// and reports its own status. What is shared is the transport: a takeover
// moves a fleet with one connect instead of one per agent, a dead server is
// retried by one link instead of one per agent, and a server sends each
// command once per fleet instead of once per agent.
//
// A slow agent loses its oldest buffered commands (counted in its
// subscription's Dropped) and never delays the others. Messages are shared
// between the agents of a fan-out: consumers must not modify them.
//
// A subscription made with SubscribeWhere may also consume messages where
// they are fanned out (its want function then reports false): an agent
// checks and counts its bound server's commands there (Agent.command), so
// that 10,000 agents are not each woken for every ping. That check reads
// only the agent's file metadata (one stat): the agents of a fleet are
// expected to keep their files on one host's file systems, where a stat
// that hangs would stop them all anyway.
type Pool struct {
	dial DialFunc
	buf  int
	// supersedes, when set, lets a fan-out that fell behind skip a message
	// a newer waiting one supersedes (SkipSuperseded); skipped counts them.
	supersedes func(older, newer broker.Message) bool
	skipped    atomic.Uint64

	mu    sync.Mutex
	links map[string]*poolLink // by target(addr)
}

// NewPool returns a pool over dial, which must depend only on the address's
// stomp_interface, stomp_port and use_ssl (the first agent's address is the
// one dialled). buffer is each agent subscription's size (0:
// DefaultPoolBuffer).
func NewPool(dial DialFunc, buffer int) *Pool {
	if buffer <= 0 {
		buffer = DefaultPoolBuffer
	}
	return &Pool{dial: dial, buf: buffer, links: map[string]*poolLink{}}
}

// SkipSuperseded lets the pool's fan-outs skip a message that a newer one,
// already waiting behind it, supersedes (supersedes(older, newer); see
// PingSupersedes): a fan-out of a ping to 10,000 agents takes tens of
// milliseconds, and while a takeover keeps the fleet busy, pings that
// arrive faster than that would otherwise queue up, and every agent would
// obey the new primary only once the backlog was worked off. Call it
// before the first Dial.
func (p *Pool) SkipSuperseded(supersedes func(older, newer broker.Message) bool) {
	p.supersedes = supersedes
}

// Skipped counts the messages the fan-outs skipped as superseded.
func (p *Pool) Skipped() uint64 { return p.skipped.Load() }

// maxFanBatch bounds the waiting messages a fan-out looks at together.
const maxFanBatch = 64

// Links is how many server connections the pool holds now.
func (p *Pool) Links() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Dial is a DialFunc: it returns a handle on the shared link to addr's
// server, dialling it if no agent holds one. Closing the handle closes its
// subscriptions; the link closes with the last handle.
func (p *Pool) Dial(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
	key := target(addr)
	p.mu.Lock()
	if l := p.links[key]; l != nil {
		l.refs++
		p.mu.Unlock()
		select {
		case <-l.ready:
		case <-ctx.Done():
			l.release()
			return nil, ctx.Err()
		}
		if l.err != nil {
			l.release()
			return nil, l.err
		}
		return &poolBus{l: l, subs: map[*poolSub]struct{}{}}, nil
	}
	l := &poolLink{p: p, key: key, ready: make(chan struct{}), refs: 1, fans: map[string]*fan{}}
	p.links[key] = l
	p.mu.Unlock()
	bus, err := p.dial(ctx, addr)
	if err != nil {
		// Keep no bus on failure: a dial function may return a typed nil
		// (a nil *Link in a non-nil Bus) with its error.
		l.err = err
	} else {
		l.bus = bus
	}
	if l.err != nil {
		// Forget it before waking the waiters: the next Dial tries again.
		p.mu.Lock()
		if p.links[key] == l {
			delete(p.links, key)
		}
		p.mu.Unlock()
	}
	close(l.ready)
	if l.err != nil {
		l.release()
		return nil, l.err
	}
	return &poolBus{l: l, subs: map[*poolSub]struct{}{}}, nil
}

// poolLink is one shared connection and its fan-outs.
type poolLink struct {
	p     *Pool
	key   string
	ready chan struct{} // closed once bus or err is set
	bus   broker.Bus
	err   error
	refs  int // guarded by p.mu

	mu   sync.Mutex // guards fans
	fans map[string]*fan
}

func (l *poolLink) release() {
	p := l.p
	p.mu.Lock()
	l.refs--
	last := l.refs == 0
	if last && p.links[l.key] == l {
		delete(p.links, l.key)
	}
	p.mu.Unlock()
	if last && l.bus != nil {
		l.bus.Close()
	}
}

// fan is one subscription on the shared link, copied to every member.
type fan struct {
	dest  string
	under broker.Subscription

	mu      sync.Mutex
	members map[*poolSub]struct{}
	// list is members as a slice for forward, made again after a change
	// (nil: to be made). A made list is never modified: forward walks it
	// without the lock, so that agents joining and leaving during a long
	// fan-out (a takeover moves thousands) do not wait for it.
	list []*poolSub
}

// snapshot returns the members as they are now.
func (f *fan) snapshot() []*poolSub {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.list == nil {
		f.list = make([]*poolSub, 0, len(f.members))
		for s := range f.members {
			f.list = append(f.list, s)
		}
	}
	return f.list
}

func (l *poolLink) join(dest string, size int, want func(broker.Message) bool) (*poolSub, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fans[dest]
	if f == nil {
		under, err := l.bus.Subscribe(dest)
		if err != nil {
			return nil, err
		}
		f = &fan{dest: dest, under: under, members: map[*poolSub]struct{}{}}
		l.fans[dest] = f
		go l.forward(f)
	}
	s := &poolSub{l: l, f: f, buf: broker.NewDropBuffer(size), want: want}
	f.mu.Lock()
	f.members[s] = struct{}{}
	f.list = nil
	f.mu.Unlock()
	return s, nil
}

// leave detaches s; the last member closes the shared subscription.
func (l *poolLink) leave(s *poolSub) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := s.f
	f.mu.Lock()
	delete(f.members, s)
	f.list = nil
	empty := len(f.members) == 0
	f.mu.Unlock()
	if empty && l.fans[f.dest] == f {
		delete(l.fans, f.dest)
		f.under.Close()
	}
}

// forward copies the shared subscription's messages to every member until
// it closes (its last member left, or the link closed). Each member's want
// is called from here, one message at a time, in order. A member that
// joins during a fan-out gets the next message; one that leaves may still
// be offered the current one (a closed buffer drops it).
//
// With SkipSuperseded, the messages already waiting when one arrives are
// taken with it, and one that a later of them supersedes is skipped.
func (l *poolLink) forward(f *fan) {
	in := f.under.C()
	var batch []broker.Message
	for open := true; open; {
		m, ok := <-in
		if !ok {
			break
		}
		batch = append(batch[:0], m)
	drain:
		for l.p.supersedes != nil && len(batch) < maxFanBatch {
			select {
			case m, ok := <-in:
				if !ok {
					open = false
					break drain
				}
				batch = append(batch, m)
			default:
				break drain
			}
		}
		for i := range batch {
			// The members (and the supersedes rule) share one signature
			// check of each message.
			batch[i].Memo = &broker.Memo{}
		}
		for i, m := range batch {
			if l.superseded(m, batch[i+1:]) {
				l.p.skipped.Add(1)
				continue
			}
			for _, s := range f.snapshot() {
				if s.want == nil || s.want(m) {
					s.push(m)
				}
			}
		}
	}
	l.mu.Lock()
	if l.fans[f.dest] == f {
		delete(l.fans, f.dest)
	}
	l.mu.Unlock()
	f.mu.Lock()
	members := f.members
	f.members = map[*poolSub]struct{}{}
	f.list = nil
	f.mu.Unlock()
	for s := range members {
		s.closeChan()
	}
}

// superseded reports whether one of later supersedes m.
func (l *poolLink) superseded(m broker.Message, later []broker.Message) bool {
	for _, n := range later {
		if l.p.supersedes(m, n) {
			return true
		}
	}
	return false
}

// poolBus is one agent's handle on a shared link.
type poolBus struct {
	l      *poolLink
	mu     sync.Mutex
	closed bool
	subs   map[*poolSub]struct{}
}

func (b *poolBus) Publish(ctx context.Context, dest string, headers map[string]string, body []byte) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return broker.ErrClosed
	}
	return b.l.bus.Publish(ctx, dest, headers, body)
}

// Connected reports whether the shared link is connected now (true when
// its bus cannot tell).
func (b *poolBus) Connected() bool { return linkUp(b.l.bus) }

func (b *poolBus) Subscribe(dest string) (broker.Subscription, error) {
	return b.SubscribeWhere(dest, nil)
}

// SubscribeWhere is Subscribe for the messages want keeps (nil: all),
// chosen where the shared subscription fans out: an agent's standby link
// takes only rebinds, and is not woken for every ping of a server it does
// not obey. want runs in the fan-out, for one message at a time and in
// order; it may handle a message itself and return false (it must not
// block: every member of the link waits for it).
func (b *poolBus) SubscribeWhere(dest string, want func(broker.Message) bool) (broker.Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	s, err := b.l.join(dest, b.l.p.buf, want)
	if err != nil {
		return nil, err
	}
	s.b = b
	b.subs[s] = struct{}{}
	return s, nil
}

// Close closes the handle's subscriptions and releases the link. Safe twice.
func (b *poolBus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	for s := range subs {
		s.Close()
	}
	b.l.release()
	return nil
}

// poolSub is one agent's subscription: a drop-oldest buffer fed by a fan.
type poolSub struct {
	l    *poolLink
	f    *fan
	b    *poolBus
	once sync.Once
	buf  *broker.DropBuffer
	want func(broker.Message) bool // nil: every message
}

func (s *poolSub) C() <-chan broker.Message { return s.buf.C() }
func (s *poolSub) Dropped() uint64          { return s.buf.Dropped() }

// push never blocks: a full buffer loses its oldest message.
func (s *poolSub) push(m broker.Message) { s.buf.Push(m) }
func (s *poolSub) closeChan()            { s.buf.Close() }

// Close ends the subscription. Safe twice.
func (s *poolSub) Close() error {
	s.once.Do(func() {
		s.l.leave(s)
		s.closeChan()
		if b := s.b; b != nil {
			b.mu.Lock()
			delete(b.subs, s)
			b.mu.Unlock()
		}
	})
	return nil
}
