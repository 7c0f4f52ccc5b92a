// Package arbiter holds a group's primary role in etcd: a server acts as
// primary only while it holds the group's election (etcd's concurrency
// package) and its lease is fresh.
//
// A Term is one won election. Its epoch comes from etcd too: the winner
// raises the group's epoch key in a transaction that holds only while its
// own leader key still exists, so two terms never share an epoch, epochs
// only go up, and a term's epoch is above every epoch the server had seen
// before (the group's epochs from before the arbiter was configured).
//
// The term renews its lease itself (KeepAliveOnce every RenewDeadline/4)
// and records when each successful renewal was sent. Valid reports whether
// the last one was sent less than RenewDeadline ago: the lease then has at
// least TTL - RenewDeadline left at etcd, whatever the network did since.
// The primary checks Valid before every message it sends, so a process
// that was paused (SIGSTOP, a VM freeze) or cut from etcd stops acting
// before its lease can expire and another server can win (invariant I8).
// Lost is closed once the term is over: the lease went stale, the session
// ended, or the leader key is gone.
package arbiter

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// Config configures the arbiter.
type Config struct {
	Endpoints []string
	// Prefix is the group's key prefix: the election lives under
	// Prefix+"/election/", the epoch at Prefix+"/epoch".
	Prefix string
	// TTL is the lease's time to live (whole seconds, at least 2 s).
	TTL time.Duration
	// RenewDeadline: a term is valid while its last successful renewal was
	// sent less than this long ago. Below TTL (config checks the margin).
	RenewDeadline time.Duration
	TLS           *tls.Config
	Username      string
	Password      string
	// DialTimeout bounds connecting (default 2 s).
	DialTimeout time.Duration
	Log         logrus.FieldLogger
	// OnRenew, when set, is told of every lease renewal: how long it took
	// and whether it renewed (metrics).
	OnRenew func(took time.Duration, ok bool)
}

// ErrNotLeader: the term was lost before its epoch was written.
var ErrNotLeader = errors.New("arbiter: lost the election")

// Arbiter is a client of the group's etcd.
type Arbiter struct {
	cfg Config
	cli *clientv3.Client

	mu      sync.Mutex
	renewMS float64 // the last renewal's latency
	renewOK uint64
	renewKO uint64
	term    *Term
}

// New connects to etcd (lazily: an unreachable cluster is not an error
// here, only in Campaign).
func New(cfg Config) (*Arbiter, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, TLS: cfg.TLS,
		Username: cfg.Username, Password: cfg.Password,
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: time.Second,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("arbiter: etcd client: %w", err)
	}
	return &Arbiter{cfg: cfg, cli: cli}, nil
}

// Close ends the client (and with it any term).
func (a *Arbiter) Close() error { return a.cli.Close() }

func (a *Arbiter) electionPrefix() string {
	return strings.TrimSuffix(a.cfg.Prefix, "/") + "/election/"
}
func (a *Arbiter) epochKey() string { return strings.TrimSuffix(a.cfg.Prefix, "/") + "/epoch" }

// Term is one won election.
type Term struct {
	Epoch uint64
	a     *Arbiter
	sess  *concurrency.Session
	el    *concurrency.Election

	mu        sync.Mutex
	lastRenew time.Time // when the last successful renewal was sent (monotonic)
	lost      chan struct{}
	why       string
	once      sync.Once
	stop      context.CancelFunc
	done      chan struct{}
}

// Campaign waits until this server wins the group's election (or ctx
// ends), then raises the group's epoch above max(the stored one, seen) and
// returns the term. node is the value the election shows as its holder.
func (a *Arbiter) Campaign(ctx context.Context, node string, seen uint64) (*Term, error) {
	return a.campaign(ctx, node, seen, false)
}

// Reclaim is Campaign for a primary that wins the election back (after its
// term ended, or after a restart): when the group's epoch is still its own
// (nobody held a term since) the term keeps it, so the agents bound to it
// stay bound; otherwise it raises the epoch as Campaign does.
func (a *Arbiter) Reclaim(ctx context.Context, node string, own uint64) (*Term, error) {
	return a.campaign(ctx, node, own, true)
}

func (a *Arbiter) campaign(ctx context.Context, node string, seen uint64, keep bool) (*Term, error) {
	ttl := int64(a.cfg.TTL / time.Second)
	if ttl < 2 {
		ttl = 2
	}
	sent := time.Now()
	gctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	lease, err := a.cli.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("arbiter: grant a lease: %w", err)
	}
	tctx, stop := context.WithCancel(context.Background())
	sess, err := concurrency.NewSession(a.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(tctx))
	if err != nil {
		stop()
		return nil, fmt.Errorf("arbiter: session: %w", err)
	}
	t := &Term{a: a, sess: sess, el: concurrency.NewElection(sess, a.electionPrefix()), lastRenew: sent,
		lost: make(chan struct{}), stop: stop, done: make(chan struct{})}
	// A campaign that did not win gives its lease back at once (bounded):
	// a waiting candidate's key would otherwise queue it for a TTL.
	abandon := func(why string) {
		t.end(why)
		stop()
		rctx, cancel := context.WithTimeout(context.Background(), a.cfg.DialTimeout)
		defer cancel()
		_, _ = a.cli.Revoke(rctx, lease.ID)
	}
	if err := t.el.Campaign(ctx, node); err != nil {
		abandon("campaign: " + err.Error())
		return nil, fmt.Errorf("arbiter: campaign: %w", err)
	}
	// The campaign may have waited long (another holder's lease running
	// out): the term's validity counts from a renewal sent now, not from
	// the grant.
	rsent := time.Now()
	rctx, rcancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	ka, err := a.cli.KeepAliveOnce(rctx, lease.ID)
	rcancel()
	if err != nil || ka.TTL <= 0 {
		abandon(fmt.Sprintf("renew after the win: %v", err))
		return nil, fmt.Errorf("arbiter: renew the lease after winning: %w", errOr(err, "the lease is gone"))
	}
	a.recordRenew(renewResult{sent: rsent, took: time.Since(rsent), ttl: ka.TTL})
	t.lastRenew = rsent
	epoch, err := t.raiseEpoch(ctx, seen, keep)
	if err != nil {
		abandon("epoch: " + err.Error())
		return nil, err
	}
	t.Epoch = epoch
	go t.run(tctx)
	a.mu.Lock()
	a.term = t
	a.mu.Unlock()
	a.cfg.Log.WithFields(logrus.Fields{"epoch": epoch, "lease": fmt.Sprintf("%x", lease.ID), "ttl": a.cfg.TTL.String(),
		"took": time.Since(sent).Round(time.Millisecond).String()}).Info("won the group's election")
	return t, nil
}

// raiseEpoch writes max(stored, seen)+1 as the group's epoch, while this
// term's leader key exists; with keep, a stored epoch equal to seen stays.
func (t *Term) raiseEpoch(ctx context.Context, seen uint64, keep bool) (uint64, error) {
	key := t.a.epochKey()
	for {
		get, err := t.a.cli.Get(ctx, key)
		if err != nil {
			return 0, fmt.Errorf("arbiter: read the epoch: %w", err)
		}
		var stored uint64
		var mod int64
		if len(get.Kvs) > 0 {
			mod = get.Kvs[0].ModRevision
			if stored, err = strconv.ParseUint(string(get.Kvs[0].Value), 10, 64); err != nil {
				return 0, fmt.Errorf("arbiter: %s holds %q: expected an unsigned integer", key, get.Kvs[0].Value)
			}
		}
		next := max(stored, seen)
		if keep && stored == seen && seen > 0 {
			next-- // written back unchanged, still guarded by the leader key
		}
		if next == ^uint64(0) {
			return 0, fmt.Errorf("arbiter: the epoch is at its maximum")
		}
		next++
		resp, err := t.a.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(t.el.Key()), "=", t.el.Rev()),
			clientv3.Compare(clientv3.ModRevision(key), "=", mod),
		).Then(clientv3.OpPut(key, strconv.FormatUint(next, 10))).Commit()
		if err != nil {
			return 0, fmt.Errorf("arbiter: write the epoch: %w", err)
		}
		if resp.Succeeded {
			return next, nil
		}
		// Someone moved the epoch, or our leader key is gone.
		lead, err := t.a.cli.Get(ctx, t.el.Key())
		if err != nil {
			return 0, fmt.Errorf("arbiter: %w", err)
		}
		if len(lead.Kvs) == 0 || lead.Kvs[0].CreateRevision != t.el.Rev() {
			return 0, ErrNotLeader
		}
	}
}

// run renews the lease, watches the leader key and the session, and ends
// the term when any says so.
func (t *Term) run(ctx context.Context) {
	defer close(t.done)
	every := t.a.cfg.RenewDeadline / 4
	tick := time.NewTicker(every / 4)
	defer tick.Stop()
	// The watch on the leader key runs on its own goroutine: opening a
	// watch blocks while etcd does not answer, and the renewal deadline
	// must be checked meanwhile.
	wctx, cancel := context.WithCancel(ctx)
	deleted := make(chan struct{})
	watchDone := make(chan struct{})
	defer func() { cancel(); <-watchDone }()
	go func() {
		defer close(watchDone)
		for wr := range t.a.cli.Watch(wctx, t.el.Key()) {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					close(deleted)
					return
				}
			}
		}
	}()
	nextRenew := time.Now()
	renewing := make(chan renewResult, 1)
	inFlight := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.sess.Done():
			t.end("the etcd session ended (lease expired or revoked)")
			return
		case <-deleted:
			t.end("the leader key was deleted")
			return
		case r := <-renewing:
			inFlight = false
			t.a.recordRenew(r)
			if r.err == nil && r.ttl > 0 {
				t.mu.Lock()
				if r.sent.After(t.lastRenew) {
					t.lastRenew = r.sent
				}
				t.mu.Unlock()
			} else if r.err == nil {
				t.end("the lease is gone at etcd")
				return
			}
		case now := <-tick.C:
			if !t.Valid() {
				t.end(fmt.Sprintf("no lease renewal for %s (renew_deadline %s)", now.Sub(t.last()).Round(time.Millisecond), t.a.cfg.RenewDeadline))
				return
			}
			if !inFlight && !now.Before(nextRenew) {
				inFlight, nextRenew = true, now.Add(every)
				go func(sent time.Time) {
					rctx, cancel := context.WithTimeout(ctx, every)
					defer cancel()
					resp, err := t.a.cli.KeepAliveOnce(rctx, t.sess.Lease())
					r := renewResult{sent: sent, took: time.Since(sent), err: err}
					if err == nil {
						r.ttl = resp.TTL
					} else if errors.Is(err, rpctypes.ErrLeaseNotFound) || strings.Contains(err.Error(), "lease not found") {
						r.err, r.ttl = nil, 0
					}
					renewing <- r
				}(now)
			}
		}
	}
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

type renewResult struct {
	sent time.Time
	took time.Duration
	ttl  int64
	err  error
}

func (a *Arbiter) recordRenew(r renewResult) {
	if a.cfg.OnRenew != nil {
		a.cfg.OnRenew(r.took, r.err == nil && r.ttl > 0)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.renewMS = float64(r.took) / float64(time.Millisecond)
	if r.err == nil && r.ttl > 0 {
		a.renewOK++
	} else {
		a.renewKO++
	}
}

func (t *Term) last() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastRenew
}

// Valid reports whether the term may act now: it is not over and its last
// successful renewal was sent less than RenewDeadline ago.
func (t *Term) Valid() bool {
	select {
	case <-t.lost:
		return false
	default:
	}
	return time.Since(t.last()) < t.a.cfg.RenewDeadline
}

// Lost is closed when the term is over.
func (t *Term) Lost() <-chan struct{} { return t.lost }

// Why says why the term ended ("" while it runs).
func (t *Term) Why() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.why
}

func (t *Term) end(why string) {
	t.once.Do(func() {
		t.mu.Lock()
		t.why = why
		t.mu.Unlock()
		close(t.lost)
		t.a.cfg.Log.WithField("why", why).Warn("the primary term in etcd is over")
	})
}

// Resign gives the election up (a clean stop, a switchover) and ends the
// term; bounded by ctx.
func (t *Term) Resign(ctx context.Context) error {
	err := t.el.Resign(ctx)
	t.end("resigned")
	t.stop()
	<-t.doneOrNil()
	_ = t.sess.Close()
	return err
}

// Close ends the term without resigning (its lease expires by itself).
func (t *Term) Close() {
	t.end("closed")
	t.stop()
	<-t.doneOrNil()
	t.sess.Orphan()
}

func (t *Term) doneOrNil() <-chan struct{} {
	if t.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return t.done
}

// Status is what status and members show of the arbiter.
type Status struct {
	Endpoints []EndpointStatus `json:"endpoints"`
	// Holder is the election's holder (its node name), "" if none or
	// unknown; LeaseTTLLeftMS this server's lease, -1 without a term.
	Holder         string  `json:"holder"`
	LeaseTTLLeftMS int64   `json:"lease_ttl_left_ms"`
	RenewLatencyMS float64 `json:"renew_latency_ms"`
	RenewsOK       uint64  `json:"renews_ok"`
	RenewsFailed   uint64  `json:"renews_failed"`
}

// EndpointStatus is one etcd endpoint.
type EndpointStatus struct {
	URL       string `json:"url"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// Status asks etcd (bounded by ctx) for the endpoints, the holder and this
// server's lease.
func (a *Arbiter) Status(ctx context.Context) Status {
	s := Status{LeaseTTLLeftMS: -1}
	for _, ep := range a.cfg.Endpoints {
		es := EndpointStatus{URL: ep}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := a.cli.Status(cctx, ep)
		cancel()
		es.Reachable = err == nil
		if err != nil {
			es.Error = err.Error()
		}
		s.Endpoints = append(s.Endpoints, es)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if resp, err := a.cli.Get(cctx, a.electionPrefix(), clientv3.WithFirstCreate()...); err == nil && len(resp.Kvs) > 0 {
		s.Holder = string(resp.Kvs[0].Value)
	}
	a.mu.Lock()
	t := a.term
	s.RenewLatencyMS, s.RenewsOK, s.RenewsFailed = a.renewMS, a.renewOK, a.renewKO
	a.mu.Unlock()
	if t != nil {
		select {
		case <-t.lost:
		default:
			if ttl, err := a.cli.TimeToLive(cctx, t.sess.Lease()); err == nil && ttl.TTL > 0 {
				s.LeaseTTLLeftMS = ttl.TTL * 1000
			}
		}
	}
	return s
}
