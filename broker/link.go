package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"
	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/internal/redact"
)

// Link defaults.
const (
	DefaultLinkHeartBeat  = time.Second
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultCloseTimeout   = 2 * time.Second
	DefaultOutboxSize     = 8192
	unsubscribeReceiptTTL = time.Second
	disconnectReceiptTTL  = time.Second
	// stableConnection: a connection that lasted less than this counts as
	// a failed attempt for the reconnect backoff.
	stableConnection = time.Second
)

// LinkConfig configures a Link.
type LinkConfig struct {
	// URL of the broker: stomp://host:port, stomp+ssl://host:port (also
	// ssl:// and tcp://), or a bare host:port.
	URL string
	// Login and Passcode are sent in CONNECT when Login is set.
	Login, Passcode string
	// VHost is the CONNECT host header. Default "/", which RabbitMQ needs
	// (it treats the header as the vhost) and the others ignore.
	VHost string
	// TLS configures TLS; it is used when set or when the URL asks for it.
	TLS *tls.Config
	// HeartBeat is the STOMP heart-beat interval asked for in both
	// directions. Default 1s; negative disables heart-beats (a frozen
	// broker is then never noticed).
	HeartBeat time.Duration
	// HeartBeatError is the slack go-stomp adds to the read timeout: a
	// silent broker is noticed after HeartBeat+HeartBeatError. Default
	// 1.5×HeartBeat, so a frozen broker is noticed within 2.5× the
	// heart-beat: ActiveMQ's heart-beats come up to 2× the interval apart
	// and with a slack of 1× an idle link to it dropped about every 20 s
	// (measured). Set it to HeartBeat for 2× detection on the embedded
	// broker or RabbitMQ.
	// A broker may raise the interval (the embedded one to its HeartBeat
	// minimum, 1s by default); the slack stays HeartBeatError, so keep
	// HeartBeat at or above the broker's minimum.
	HeartBeatError time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential delay
	// between reconnect attempts. Defaults 100ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// DialTimeout bounds one TCP+TLS+CONNECT attempt. Default 5s.
	DialTimeout time.Duration
	// OnState is called on every connect and disconnect (and failed
	// attempt), from the link's goroutine, in order; StateClosed last, from
	// Close. It must not block long: the link waits for it.
	OnState func(State)
	// Log receives structured logs; default logrus.StandardLogger().
	Log logrus.FieldLogger
	// BufferSize is each subscription's buffer; default DefaultBufferSize.
	BufferSize int
	// OutboxSize bounds the messages waiting for the link's sender: Publish
	// hands its message to the outbox and never waits on go-stomp's
	// connection lock. When it is full the oldest waiting message is dropped
	// (its Publish fails with ErrOutboxFull; counted in Stats). Default
	// DefaultOutboxSize.
	OutboxSize int
	// CloseTimeout bounds Close: the DISCONNECT goodbye gets half of it,
	// then the socket is closed under go-stomp. Default 2s.
	CloseTimeout time.Duration
	// WriteTimeout: the connection is dropped (and redialled) when one write
	// to the broker blocks this long (a broker that stopped reading).
	// Default HeartBeat+HeartBeatError, or DialTimeout with heart-beats off.
	WriteTimeout time.Duration
}

// ErrOutboxFull is why a Publish failed when its message was dropped from a
// full outbox (the broker is not taking messages as fast as they come).
var ErrOutboxFull = errors.New("broker: outbox full")

// LinkStats counts what happened to published messages.
type LinkStats struct {
	Sent       uint64 // handed to the connection
	OutboxFull uint64 // dropped from a full outbox (oldest first)
	Expired    uint64 // their Publish's context ended before they were sent
	Failed     uint64 // the connection refused them or went down first
}

// ConnState is the state of a Link's connection.
type ConnState int

// Link connection states.
const (
	StateConnecting ConnState = iota
	StateConnected
	StateDisconnected
	StateClosed
)

func (s ConnState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// State is what OnState reports.
type State struct {
	State   ConnState
	Addr    string // broker host:port
	Err     error  // why it disconnected or why the attempt failed
	Attempt int    // consecutive failed attempts (0 when connected)
}

func (s State) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", s.State, s.Addr)
	if s.Err != nil {
		fmt.Fprintf(&b, ": %v", s.Err)
	}
	if s.Attempt > 0 {
		fmt.Fprintf(&b, " (attempt %d)", s.Attempt)
	}
	return b.String()
}

type endpoint struct {
	addr   string
	useTLS bool
	host   string
}

// readChannelCapacity is go-stomp's read channel size per connection (its
// default is 20); see Dial's options.
const readChannelCapacity = 256

// URLUsesTLS reports whether a broker URL asks for TLS (stomp+ssl:// and
// its synonyms); false for a plain or malformed one.
func URLUsesTLS(raw string) bool {
	ep, err := parseURL(raw)
	return err == nil && ep.useTLS
}

func parseURL(raw string) (endpoint, error) {
	shown := redact.URL(raw)
	if raw == "" {
		return endpoint{}, fmt.Errorf("%w: URL is empty", ErrInvalidConfig)
	}
	if !strings.Contains(raw, "://") {
		if _, _, err := net.SplitHostPort(raw); err != nil {
			return endpoint{}, fmt.Errorf("%w: URL %q: %v", ErrInvalidConfig, shown, err)
		}
		h, _, _ := net.SplitHostPort(raw)
		return endpoint{addr: raw, host: h}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL, password and all
		}
		return endpoint{}, fmt.Errorf("%w: URL %q: %v", ErrInvalidConfig, shown, err)
	}
	var ep endpoint
	switch u.Scheme {
	case "stomp", "tcp":
	case "stomp+ssl", "stomp+tls", "ssl", "tls", "stomps":
		ep.useTLS = true
	default:
		return endpoint{}, fmt.Errorf("%w: URL %q: scheme must be stomp or stomp+ssl", ErrInvalidConfig, shown)
	}
	if u.Port() == "" {
		return endpoint{}, fmt.Errorf("%w: URL %q: no port", ErrInvalidConfig, shown)
	}
	ep.addr = u.Host
	ep.host = u.Hostname()
	return ep, nil
}

func (c LinkConfig) withDefaults() (LinkConfig, endpoint, error) {
	ep, err := parseURL(c.URL)
	if err != nil {
		return c, ep, err
	}
	if c.TLS != nil {
		ep.useTLS = true
	}
	if c.VHost == "" {
		c.VHost = "/"
	}
	if c.HeartBeat == 0 {
		c.HeartBeat = DefaultLinkHeartBeat
	}
	if c.HeartBeatError == 0 {
		c.HeartBeatError = max(c.HeartBeat*3/2, 0)
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.BufferSize == 0 {
		c.BufferSize = DefaultBufferSize
	}
	if c.OutboxSize == 0 {
		c.OutboxSize = DefaultOutboxSize
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = c.DialTimeout
		if c.HeartBeat > 0 {
			c.WriteTimeout = c.HeartBeat + c.HeartBeatError
		}
	}
	if c.Log == nil {
		c.Log = logrus.StandardLogger()
	}
	switch {
	case c.BackoffMin < 0 || c.BackoffMax < c.BackoffMin:
		return c, ep, fmt.Errorf("%w: BackoffMin (%s) must be positive and at most BackoffMax (%s)", ErrInvalidConfig, c.BackoffMin, c.BackoffMax)
	case c.HeartBeatError < 0:
		return c, ep, fmt.Errorf("%w: HeartBeatError (%s) must not be negative", ErrInvalidConfig, c.HeartBeatError)
	case c.BufferSize < 1:
		return c, ep, fmt.Errorf("%w: BufferSize (%d) must be positive", ErrInvalidConfig, c.BufferSize)
	case c.DialTimeout < 0:
		return c, ep, fmt.Errorf("%w: DialTimeout (%s) must be positive", ErrInvalidConfig, c.DialTimeout)
	case c.OutboxSize < 1:
		return c, ep, fmt.Errorf("%w: OutboxSize (%d) must be positive", ErrInvalidConfig, c.OutboxSize)
	case c.CloseTimeout < 0:
		return c, ep, fmt.Errorf("%w: CloseTimeout (%s) must be positive", ErrInvalidConfig, c.CloseTimeout)
	case c.WriteTimeout < 0:
		return c, ep, fmt.Errorf("%w: WriteTimeout (%s) must be positive", ErrInvalidConfig, c.WriteTimeout)
	}
	return c, ep, nil
}

// Link is a Bus over one STOMP connection to a broker, kept up in the
// background: it reconnects with jittered exponential backoff and
// resubscribes every live subscription. Messages published while it is down
// fail with ErrNotConnected (nothing is queued across a reconnect).
//
// go-stomp's Conn.Send holds the connection's lock while it waits (up to its
// send timeout) for room in a small write queue; when the broker stops
// reading, or dies with that queue full, every Send and the Disconnect wait
// their turn behind each other. So callers never call into go-stomp: Publish
// puts its message in a bounded outbox, one sender goroutine per connection
// is the only caller of Send, and Publish waits for the outcome only as long
// as its context allows. Close closes the socket under go-stomp when the
// goodbye does not finish in time.
type Link struct {
	cfg LinkConfig
	ep  endpoint
	log logrus.FieldLogger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // run loop and drains

	mu        sync.Mutex
	conn      *stomp.Conn
	wc        *watchedConn  // conn's socket
	out       chan *pubReq  // conn's outbox; nil while down
	connected chan struct{} // closed while connected; replaced on disconnect
	closed    bool

	sent, outboxFull, expired, failed atomic.Uint64

	subMu sync.Mutex // serialises subscription changes and resubscription
	subs  map[*linkSub]struct{}

	firstAttempt chan struct{}
	closeOnce    sync.Once
}

// Dial starts a Link and returns after its first connection attempt (or when
// ctx ends, which closes the link and returns ctx's error). A failed first
// attempt is not an error: the link keeps retrying in the background; use
// WaitConnected to wait for it. ctx only bounds this wait; the link lives
// until Close. Only an invalid configuration makes Dial fail outright.
func Dial(ctx context.Context, cfg LinkConfig) (*Link, error) {
	cfg, ep, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &Link{
		cfg:          cfg,
		ep:           ep,
		log:          cfg.Log.WithFields(logrus.Fields{"component": "broker-link", "broker": ep.addr}),
		ctx:          lctx,
		cancel:       cancel,
		connected:    make(chan struct{}),
		subs:         make(map[*linkSub]struct{}),
		firstAttempt: make(chan struct{}),
	}
	l.wg.Add(1)
	go l.run()
	select {
	case <-l.firstAttempt:
		return l, nil
	case <-ctx.Done():
		l.Close()
		return nil, ctx.Err()
	}
}

// Connected reports whether the link is connected now.
func (l *Link) Connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn != nil
}

// WaitConnected blocks until the link is connected, ctx ends, or the link is
// closed (ErrClosed).
func (l *Link) WaitConnected(ctx context.Context) error {
	for {
		l.mu.Lock()
		ch, closed, up := l.connected, l.closed, l.conn != nil
		l.mu.Unlock()
		if closed {
			return ErrClosed
		}
		if up {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.ctx.Done():
			return ErrClosed
		}
	}
}

// Close disconnects, closes every subscription and waits for the link's
// goroutines, at most CloseTimeout: a broker that does not answer the
// goodbye has its socket closed under go-stomp after half of it (go-stomp's
// own goroutines may then take up to its send timeout to notice). Safe to
// call more than once; a Close that ran out of time returns
// ErrCloseTimeout (the first time).
func (l *Link) Close() error {
	var closeErr error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.cancel()
		l.subMu.Lock()
		subs := l.subs
		l.subs = map[*linkSub]struct{}{}
		l.subMu.Unlock()
		for s := range subs {
			s.buf.Close()
		}
		done := make(chan struct{})
		go func() { l.wg.Wait(); close(done) }()
		t := time.NewTimer(l.cfg.CloseTimeout)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			// The run loop closes the socket itself after half the
			// budget; this is the last resort.
			l.mu.Lock()
			wc := l.wc
			l.mu.Unlock()
			if wc != nil {
				wc.hardClose()
			}
			closeErr = fmt.Errorf("%w: broker link to %s after %s", ErrCloseTimeout, l.ep.addr, l.cfg.CloseTimeout)
			l.log.WithError(closeErr).Warn("broker link close did not finish in time")
		}
		l.report(State{State: StateClosed, Addr: l.ep.addr})
	})
	return closeErr
}

// Stats returns the link's publish counters.
func (l *Link) Stats() LinkStats {
	return LinkStats{Sent: l.sent.Load(), OutboxFull: l.outboxFull.Load(), Expired: l.expired.Load(), Failed: l.failed.Load()}
}

// pubReq is one message in a connection's outbox.
type pubReq struct {
	ctx  context.Context
	dest string
	body []byte
	opts []func(*frame.Frame) error
	done chan error // buffered: the sender never waits for the publisher
}

// Publish sends one message with the given custom headers. It fails with
// ErrNotConnected (wrapped) while the link is down and ErrClosed after
// Close. It never waits on go-stomp: the message goes to the connection's
// outbox and Publish waits for the sender's outcome until ctx ends (then it
// returns ctx's error and the message is not sent if it has not been yet).
// A full outbox drops its oldest message, whose Publish fails with
// ErrOutboxFull.
func (l *Link) Publish(ctx context.Context, dest string, headers map[string]string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	keys := make([]string, 0, len(headers))
	for k := range headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	opts := make([]func(*frame.Frame) error, 0, len(keys))
	for _, k := range keys {
		opts = append(opts, stomp.SendOpt.Header(k, headers[k]))
	}
	r := &pubReq{ctx: ctx, dest: dest, body: body, opts: opts, done: make(chan error, 1)}
	l.mu.Lock()
	out, closed := l.out, l.closed
	if closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if out == nil {
		l.mu.Unlock()
		return fmt.Errorf("publish to %s via %s: %w", dest, l.ep.addr, ErrNotConnected)
	}
	// Only publishers push, under l.mu, so after making room the push
	// cannot fail.
	for pushed := false; !pushed; {
		select {
		case out <- r:
			pushed = true
		default:
			select {
			case old := <-out:
				l.outboxFull.Add(1)
				old.done <- fmt.Errorf("publish to %s via %s: %w (%d waiting)", old.dest, l.ep.addr, ErrOutboxFull, cap(out))
			default:
			}
		}
	}
	l.mu.Unlock()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("publish to %s via %s: %w", dest, l.ep.addr, ctx.Err())
	case <-l.ctx.Done():
		return ErrClosed
	}
}

// send is a connection's only caller of go-stomp's Send: it takes the
// outbox's messages in order until the connection is detached (down or
// closing), then fails what is left.
func (l *Link) send(conn *stomp.Conn, wc *watchedConn, out chan *pubReq, detached <-chan struct{}) {
	fail := func(r *pubReq, err error) {
		l.failed.Add(1)
		r.done <- fmt.Errorf("publish to %s via %s: %w: %v", r.dest, l.ep.addr, ErrNotConnected, err)
	}
	for {
		select {
		case r := <-out:
			if err := r.ctx.Err(); err != nil {
				l.expired.Add(1)
				r.done <- err
				continue
			}
			select {
			case <-wc.dead:
				fail(r, wc.reason())
				continue
			case <-detached:
				fail(r, errors.New("connection closing"))
				continue
			default:
			}
			if err := conn.Send(r.dest, "", r.body, r.opts...); err != nil {
				fail(r, err)
				continue
			}
			l.sent.Add(1)
			r.done <- nil
		case <-detached:
			for {
				select {
				case r := <-out:
					fail(r, errors.New("connection lost"))
				default:
					return
				}
			}
		}
	}
}

// Subscribe registers interest in dest. While the link is down the
// subscription is registered and made on the next connection.
func (l *Link) Subscribe(dest string) (Subscription, error) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	l.mu.Lock()
	conn, closed := l.conn, l.closed
	l.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	s := &linkSub{link: l, dest: dest, buf: NewDropBuffer(l.cfg.BufferSize)}
	l.subs[s] = struct{}{}
	if conn != nil {
		if err := l.subscribeOn(conn, s); err != nil {
			// The connection is failing; the run loop will reconnect
			// and resubscribe.
			l.log.WithError(err).WithField("destination", dest).Debug("subscribe failed; will retry after reconnect")
		}
	}
	return s, nil
}

// subscribeOn makes s's subscription on conn and starts its drain. Caller
// holds subMu.
func (l *Link) subscribeOn(conn *stomp.Conn, s *linkSub) error {
	ss, err := conn.Subscribe(s.dest, stomp.AckAuto)
	if err != nil {
		return err
	}
	s.cur = ss
	l.wg.Add(1)
	go l.drain(ss, s)
	return nil
}

// drain moves go-stomp's messages into the subscription's drop-oldest buffer
// so a slow consumer never stops the connection from reading. It ends when
// go-stomp closes the channel (connection lost, or unsubscribed).
func (l *Link) drain(ss *stomp.Subscription, s *linkSub) {
	defer l.wg.Done()
	for m := range ss.C {
		if m.Err != nil {
			l.log.WithError(m.Err).WithField("destination", s.dest).Debug("subscription ended")
			continue
		}
		s.buf.Push(fromStomp(m))
	}
}

// transportHeaders are not passed on in Message.Headers: STOMP's own, the
// ones ActiveMQ and RabbitMQ add, and go-stomp's server's copy of
// message-id ("id").
var transportHeaders = map[string]bool{
	"destination": true, "message-id": true, "id": true, "subscription": true,
	"content-length": true, "content-type": true, "ack": true, "receipt": true,
	"expires": true, "priority": true, "timestamp": true, "persistent": true,
	"redelivered": true, "original-destination": true,
}

func fromStomp(m *stomp.Message) Message {
	out := Message{Destination: m.Destination, Body: m.Body, Headers: map[string]string{}}
	if m.Header != nil {
		for i := 0; i < m.Header.Len(); i++ {
			k, v := m.Header.GetAt(i)
			if transportHeaders[k] {
				continue
			}
			if _, dup := out.Headers[k]; dup {
				continue // STOMP: the first occurrence wins
			}
			out.Headers[k] = v
		}
	}
	return out
}

func (l *Link) report(s State) {
	fields := logrus.Fields{"state": s.State.String()}
	if s.Attempt > 0 {
		fields["attempt"] = s.Attempt
	}
	entry := l.log.WithFields(fields)
	if s.Err != nil {
		entry = entry.WithError(s.Err)
	}
	switch s.State {
	case StateConnected, StateClosed:
		entry.Info("broker link " + s.State.String())
	case StateDisconnected:
		if s.Attempt <= 1 {
			entry.Warn("broker link down")
		} else {
			entry.Debug("broker link still down")
		}
	}
	if l.cfg.OnState != nil {
		l.cfg.OnState(s)
	}
}

func (l *Link) run() {
	defer l.wg.Done()
	first := true
	defer func() {
		if first {
			close(l.firstAttempt)
		}
	}()
	attempt := 0
	for {
		conn, wc, err := l.connect()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			attempt++
			l.report(State{State: StateDisconnected, Addr: l.ep.addr, Err: err, Attempt: attempt})
			if first {
				first = false
				close(l.firstAttempt)
			}
			if !l.sleep(l.backoff(attempt)) {
				return
			}
			continue
		}
		l.subMu.Lock()
		for s := range l.subs {
			if err := l.subscribeOn(conn, s); err != nil {
				l.log.WithError(err).WithField("destination", s.dest).Warn("resubscribe failed")
			}
		}
		out := make(chan *pubReq, l.cfg.OutboxSize)
		detached := make(chan struct{})
		go l.send(conn, wc, out, detached)
		l.mu.Lock()
		l.conn, l.wc, l.out = conn, wc, out
		close(l.connected)
		l.mu.Unlock()
		l.subMu.Unlock()
		l.report(State{State: StateConnected, Addr: l.ep.addr})
		if first {
			first = false
			close(l.firstAttempt)
		}

		connectedAt := time.Now()
		var reason error
		select {
		case <-wc.dead:
			reason = wc.reason()
		case <-l.ctx.Done():
		}
		l.mu.Lock()
		l.conn, l.out = nil, nil
		l.connected = make(chan struct{})
		l.mu.Unlock()
		close(detached) // nothing enters out any more; the sender fails the rest
		if l.ctx.Err() != nil {
			l.goodbye(conn, wc)
			l.mu.Lock()
			l.wc = nil
			l.mu.Unlock()
			return
		}
		// Close the socket first: go-stomp's MustDisconnect waits for its
		// lock, which a Send may hold for its whole send timeout.
		wc.hardClose()
		go func() { _ = conn.MustDisconnect() }()
		l.mu.Lock()
		l.wc = nil
		l.mu.Unlock()
		// A connection that lived a while earns a quick reconnect (a broker
		// restart is usually quick); one that died at once (the broker
		// refuses a subscription with an ERROR frame, say) counts as a
		// failed attempt, so the link backs off instead of spinning.
		delay := time.Duration(rand.Int64N(int64(l.cfg.BackoffMin) + 1))
		if time.Since(connectedAt) < stableConnection {
			attempt++
			delay = l.backoff(attempt)
		} else {
			attempt = 0
		}
		l.report(State{State: StateDisconnected, Addr: l.ep.addr, Err: reason, Attempt: attempt})
		if !l.sleep(delay) {
			return
		}
	}
}

// goodbye sends DISCONNECT and waits for its receipt for at most half of
// CloseTimeout, then closes the socket under go-stomp (which unblocks its
// writer; its goroutines then end by themselves).
func (l *Link) goodbye(conn *stomp.Conn, wc *watchedConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = conn.Disconnect()
		_ = conn.MustDisconnect()
	}()
	t := time.NewTimer(l.cfg.CloseTimeout / 2)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		l.log.Debug("broker did not take the DISCONNECT in time; closing the socket")
	}
	wc.hardClose()
}

func (l *Link) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// backoff is BackoffMin·2^(attempt-1) capped at BackoffMax, with "equal
// jitter" (half fixed, half random).
func (l *Link) backoff(attempt int) time.Duration {
	d := l.cfg.BackoffMin
	for i := 1; i < attempt && d < l.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, l.cfg.BackoffMax)
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

func (l *Link) connect() (*stomp.Conn, *watchedConn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	nc, err := d.DialContext(ctx, "tcp", l.ep.addr)
	if err != nil {
		return nil, nil, err
	}
	raw := nc
	if l.ep.useTLS {
		tc := l.cfg.TLS
		if tc == nil {
			tc = &tls.Config{}
		} else {
			tc = tc.Clone()
		}
		if tc.ServerName == "" {
			tc.ServerName = l.ep.host
		}
		tlsConn := tls.Client(nc, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tlsConn
	}
	wc := &watchedConn{Conn: nc, raw: raw, dead: make(chan struct{}), writeTimeout: l.cfg.WriteTimeout}
	hb := max(l.cfg.HeartBeat, 0)
	sendTimeout := min(max(2*hb, 500*time.Millisecond), 5*time.Second)
	opts := []func(*stomp.Conn) error{
		stomp.ConnOpt.Host(l.cfg.VHost),
		stomp.ConnOpt.HeartBeat(hb, hb),
		stomp.ConnOpt.HeartBeatError(l.cfg.HeartBeatError),
		stomp.ConnOpt.MsgSendTimeout(sendTimeout),
		stomp.ConnOpt.UnsubscribeReceiptTimeout(unsubscribeReceiptTTL),
		stomp.ConnOpt.DisconnectReceiptTimeout(disconnectReceiptTTL),
		stomp.ConnOpt.Logger(stompLogger{l.log}),
		// go-stomp's read goroutine blocks for good on a full read channel
		// once its processing goroutine has ended (a write error while
		// messages are in flight). Room for what a closing socket can still
		// deliver lets it reach the read error and exit.
		stomp.ConnOpt.ReadChannelCapacity(readChannelCapacity),
	}
	if l.cfg.Login != "" {
		opts = append(opts, stomp.ConnOpt.Login(l.cfg.Login, l.cfg.Passcode))
	}
	// go-stomp only applies ctx's deadline to the CONNECTED wait; close the
	// socket on cancellation (Close) too.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	conn, err := stomp.ConnectWithContext(ctx, wc, opts...)
	if !stop() && err == nil {
		err = ctx.Err()
		_ = conn.MustDisconnect()
	}
	if err != nil {
		wc.Close()
		return nil, nil, err
	}
	return conn, wc, nil
}

// watchedConn tells the link when go-stomp's connection is gone: on the first
// read error (broker closed or died) or when go-stomp closes it (heart-beat
// timeout, ERROR frame, MustDisconnect).
//
// It also bounds every write by writeTimeout: go-stomp's writer has no
// deadline, and while it is blocked writing to a broker that stopped reading
// its I/O loop cannot notice a heart-beat timeout either.
type watchedConn struct {
	net.Conn
	raw          net.Conn // the TCP connection under TLS (or Conn itself)
	writeTimeout time.Duration
	once         sync.Once
	dead         chan struct{}
	mu           sync.Mutex
	err          error
}

func (w *watchedConn) Write(p []byte) (int, error) {
	if w.writeTimeout > 0 {
		_ = w.Conn.SetWriteDeadline(time.Now().Add(w.writeTimeout))
	}
	n, err := w.Conn.Write(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("broker stopped reading: a write blocked for %s", w.writeTimeout)
		}
		w.fail(err)
	}
	return n, err
}

func (w *watchedConn) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.once.Do(func() { close(w.dead) })
}

func (w *watchedConn) reason() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *watchedConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("broker closed the connection")
		}
		w.fail(err)
	}
	return n, err
}

func (w *watchedConn) Close() error {
	w.fail(errors.New("connection closed by the STOMP client (heart-beat timeout or ERROR frame)"))
	return w.Conn.Close()
}

// hardClose closes the TCP socket under go-stomp (and under TLS, whose
// close_notify could block on a broker that does not read), which ends
// go-stomp's blocked writer and reader.
func (w *watchedConn) hardClose() {
	w.fail(errors.New("connection closed by the link"))
	_ = w.raw.Close()
}

// linkSub is a Link subscription: it outlives connections.
type linkSub struct {
	link *Link
	dest string
	buf  *DropBuffer
	cur  *stomp.Subscription // guarded by link.subMu
}

func (s *linkSub) C() <-chan Message { return s.buf.C() }
func (s *linkSub) Dropped() uint64   { return s.buf.Dropped() }

// Close ends the subscription at once: nothing more reaches C. No
// UNSUBSCRIBE is sent: go-stomp v3.1.5's Subscription.Unsubscribe waits for
// a receipt (the embedded broker never sends one) and, when that wait times
// out, sends on the subscription's channel after checking it is open — a
// data race with the connection's close of that channel, and a "send on
// closed channel" panic when the close wins. The broker side of the
// subscription ends with the connection; until then its messages are
// drained and dropped (the drain ends when go-stomp closes the channel).
func (s *linkSub) Close() error {
	l := s.link
	l.subMu.Lock()
	delete(l.subs, s)
	s.cur = nil
	l.subMu.Unlock()
	s.buf.Close()
	return nil
}
