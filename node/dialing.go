package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/protocol"
)

// Dialer opens a bus to the broker at url. The production dialer is a
// broker.Link (reconnecting STOMP); tests pass MemHub clients.
type Dialer func(ctx context.Context, url string, o DialOptions) (broker.Bus, error)

// DialOptions are what a role asks of a link.
type DialOptions struct {
	// OnState, when set, is told whether the link is connected, on every
	// change, and why not (the heartbeat channel shown in status).
	OnState func(connected bool, why error)
	// BufferSize is the per-subscription buffer (0: the dialer's default).
	BufferSize int
}

// EmbeddedBroker is the node's own broker, as the node uses it.
type EmbeddedBroker interface {
	Addr() string
	Close() error
}

// BrokerStarter starts the embedded broker.
type BrokerStarter func(broker.ServerConfig) (EmbeddedBroker, error)

func startEmbedded(cfg broker.ServerConfig) (EmbeddedBroker, error) {
	return broker.StartServer(cfg)
}

func (n *Node) brokerConfig() broker.ServerConfig {
	cfg := broker.ServerConfig{
		Listen: n.cfg.Listen, Login: n.cfg.Broker.Login, Passcode: n.cfg.Broker.Passcode,
		TLS: n.serverTLS, Log: n.log.WithField("component", "broker"),
	}
	if pc := n.signer.BrokerPasscode(); pc != "" {
		// The group's servers present a credential derived from the group
		// key: their links are never crowded out by others' connections.
		cfg.TrustedLogin, cfg.TrustedPasscode = protocol.ServerLogin, pc
	}
	return cfg
}

// credentials are what this server presents to the broker at url: the
// operator's broker.login for an external heartbeat broker, and for an
// embedded one (ours, a peer's) the operator's login if set, else the
// group's server credential.
func (n *Node) credentials(url string) (login, passcode string) {
	if n.cfg.Broker.Login != "" || url == n.cfg.HeartbeatBroker {
		return n.cfg.Broker.Login, n.cfg.Broker.Passcode
	}
	if pc := n.signer.BrokerPasscode(); pc != "" {
		return protocol.ServerLogin, pc
	}
	return "", ""
}

// ownLinkBuffer is the per-subscription buffer of the primary's link to its
// own broker: at least one status report per agent of a 10,000-agent fleet.
const ownLinkBuffer = 16384

// localBroker is an embedded broker that serves its own process in memory
// (broker.Server.Local).
type localBroker interface {
	Local(bufferSize int) broker.Bus
}

// dialSTOMP is the production Dialer. The link to the server's own broker
// is in-process when the broker offers it: every agent's status report
// reaches the primary without a frame written, read and parsed again
// between two goroutines of one process. It is up from the start and for
// as long as the broker runs.
func (n *Node) dialSTOMP(ctx context.Context, url string, o DialOptions) (broker.Bus, error) {
	if url == n.ownURL && n.ownLocal != nil {
		if o.OnState != nil {
			o.OnState(true, nil)
		}
		return n.ownLocal.Local(o.BufferSize), nil
	}
	login, passcode := n.credentials(url)
	cfg := broker.LinkConfig{
		URL: url, Login: login, Passcode: passcode, VHost: n.cfg.Broker.Vhost,
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "link": url}), BufferSize: o.BufferSize,
	}
	if broker.URLUsesTLS(url) {
		cfg.TLS = n.clientTLS
		if url == n.ownURL && n.ownTLS != nil {
			cfg.TLS = n.ownTLS
		}
	}
	if o.OnState != nil {
		cfg.OnState = func(s broker.State) { o.OnState(s.State == broker.StateConnected, s.Err) }
	}
	l, err := broker.Dial(ctx, cfg)
	if err != nil {
		return nil, err // a plain nil: never a typed-nil Bus
	}
	return l, nil
}

// channelState is the heartbeat channel shown in status. Each new link
// takes a new generation; a callback of an older link (still closing in
// the background) changes nothing.
type channelState struct {
	url string
	up  bool
	why string // the last reason it was down ("" while up)
	gen uint64
}

// dial opens a link for a role. With track, the link is the heartbeat
// channel that status shows.
func (n *Node) dial(ctx context.Context, url string, track bool) (broker.Bus, error) {
	o := DialOptions{}
	if url == n.ownURL {
		// The primary's own link carries agent statuses, which come in a
		// burst (every agent reports on the first ping after a takeover):
		// room for a large fleet's burst before the oldest are dropped.
		o.BufferSize = ownLinkBuffer
	}
	if track {
		n.mu.Lock()
		n.channel.gen++
		gen := n.channel.gen
		n.channel.url, n.channel.up, n.channel.why = url, false, ""
		n.mu.Unlock()
		o.OnState = func(up bool, why error) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.channel.gen == gen {
				n.channel.up = up
				n.channel.why = ""
				if !up && why != nil {
					n.channel.why = why.Error()
				}
			}
		}
	}
	return n.opts.Dial(ctx, url, o)
}

// closeLater closes a bus without waiting: closing a link to a frozen broker
// can block until a timeout, and role changes must not wait for it.
func (n *Node) closeLater(b broker.Bus) {
	n.g.Go(func() { b.Close() })
}

// lazyBus is a bus whose link is dialed in the background, so a frozen or
// unreachable peer never delays the role that uses it. Until the link
// exists, Publish reports broker.ErrNotConnected; a subscription made
// before then gets its messages once the link is there (and, as every
// link's, across its reconnects).
type lazyBus struct {
	mu   sync.Mutex
	link broker.Bus
	done bool
	subs []*lazySub
}

func (n *Node) dialLazy(ctx context.Context, url string) *lazyBus {
	lb := &lazyBus{}
	n.g.Go(func() {
		l, err := n.dial(ctx, url, false)
		if err != nil {
			return
		}
		if !lb.setLink(l) {
			n.closeLater(l)
		}
	})
	return lb
}

// setLink hands the bus its dialed link and attaches the subscriptions
// made meanwhile; false when the bus was closed first (l is not kept).
func (b *lazyBus) setLink(l broker.Bus) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return false
	}
	b.link = l
	for _, s := range b.subs {
		s.attach(l)
	}
	return true
}

func (b *lazyBus) Publish(ctx context.Context, dest string, h map[string]string, body []byte) error {
	b.mu.Lock()
	l := b.link
	b.mu.Unlock()
	if l == nil {
		return broker.ErrNotConnected
	}
	return l.Publish(ctx, dest, h, body)
}

// Subscribe subscribes to dest on the link, now or once it is dialed.
func (b *lazyBus) Subscribe(dest string) (broker.Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return nil, broker.ErrClosed
	}
	s := &lazySub{dest: dest, buf: broker.NewDropBuffer(0)}
	b.subs = append(b.subs, s)
	if b.link != nil {
		s.attach(b.link)
	}
	return s, nil
}

// Close releases the link (in the background), ends the subscriptions and
// stops a pending dial from keeping its link.
func (b *lazyBus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	subs, link := b.subs, b.link
	b.subs, b.link = nil, nil
	if len(subs) > 0 || link != nil {
		go func() {
			for _, s := range subs {
				s.Close()
			}
			if link != nil {
				link.Close()
			}
		}()
	}
	return nil
}

// lazySub is a lazyBus subscription: its buffer is fed, by a goroutine it
// owns, from the link's subscription once the link exists (a full buffer
// loses its oldest message, as every subscription's).
type lazySub struct {
	dest string
	buf  *broker.DropBuffer

	mu      sync.Mutex
	under   broker.Subscription
	stopped bool
	wg      sync.WaitGroup
}

// attach subscribes on l and starts forwarding (the bus's mu held).
func (s *lazySub) attach(l broker.Bus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	under, err := l.Subscribe(s.dest)
	if err != nil {
		return // a closed link: nothing to forward
	}
	s.under = under
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for m := range under.C() { // closed by Close, or with the link
			s.buf.Push(m)
		}
	}()
}

func (s *lazySub) C() <-chan broker.Message { return s.buf.C() }

func (s *lazySub) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.buf.Dropped()
	if s.under != nil {
		n += s.under.Dropped()
	}
	return n
}

// Close ends the subscription and its forwarding goroutine. Safe twice.
func (s *lazySub) Close() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	under := s.under
	s.mu.Unlock()
	if under != nil {
		under.Close()
	}
	s.wg.Wait()
	s.buf.Close()
	return nil
}

// effectiveAdvertise replaces port 0 in advertise with the bound port.
func effectiveAdvertise(advertise, bound string) string {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil || port != "0" {
		return advertise
	}
	_, bport, err := net.SplitHostPort(bound)
	if err != nil {
		return advertise
	}
	return net.JoinHostPort(host, bport)
}

// loopback turns a listen address into one this host can dial.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

func (n *Node) heartbeatURL(primaryLoc string) string {
	if n.cfg.HeartbeatBroker != "" {
		return n.cfg.HeartbeatBroker
	}
	return n.brokerURL(primaryLoc)
}

// brokerURL is the URL of an embedded broker (ours or the peer's) at
// host:port: a pair is configured alike, so both speak TLS when we do.
func (n *Node) brokerURL(hostport string) string {
	if n.serverTLS != nil {
		return "stomp+ssl://" + hostport
	}
	return "stomp://" + hostport
}

// trustOnly is the client side of a link to our own TLS broker: it reaches
// it on a loopback address its certificate need not name, so instead of a
// host name check it accepts exactly the certificate the broker serves.
func trustOnly(srv *tls.Config) *tls.Config {
	if srv == nil || len(srv.Certificates) == 0 || len(srv.Certificates[0].Certificate) == 0 {
		return nil
	}
	own := srv.Certificates[0].Certificate[0]
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the exact match below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) > 0 && bytes.Equal(raw[0], own) {
				return nil
			}
			return errors.New("the broker on our own address did not present our own certificate")
		},
	}
}
