package arbiter

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/internal/testetcd"
	"github.com/tandem-ha/tandem/internal/testports"
)

// A deadline that outlasts an etcd leader change on a loaded machine (the
// members elect within 500 ms; the client moves to another endpoint).
const (
	testTTL      = 4 * time.Second
	testDeadline = 2500 * time.Millisecond
)

func newArbiter(t *testing.T, endpoints []string) *Arbiter {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	a, err := New(Config{Endpoints: endpoints, Prefix: "/tandem/test-" + strings.ReplaceAll(t.Name(), "/", "-"), TTL: testTTL, RenewDeadline: testDeadline, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func campaign(t *testing.T, a *Arbiter, node string, seen uint64) *Term {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	term, err := a.Campaign(ctx, node, seen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(term.Close)
	return term
}

func TestEpochsComeFromTheElectionMonotonicAndAboveWhatWasSeen(t *testing.T) {
	c := testetcd.Start(t, 3)
	a, b := newArbiter(t, c.Endpoints()), newArbiter(t, c.Endpoints())
	ta := campaign(t, a, "a", 41) // the group was at epoch 41 before the arbiter
	if ta.Epoch != 42 {
		t.Fatalf("first term at epoch %d, want 42 (above what was seen)", ta.Epoch)
	}
	won := make(chan *Term, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		tb, err := b.Campaign(ctx, "b", 0)
		if err != nil {
			t.Error(err)
		}
		won <- tb
	}()
	// b waits while a holds the election: a's term stays valid meanwhile.
	deadline := time.Now().Add(3 * testDeadline)
	for time.Now().Before(deadline) {
		if !ta.Valid() {
			t.Fatalf("a's term went invalid while it held the election: %s", ta.Why())
		}
		select {
		case <-won:
			t.Fatal("b won while a held the election")
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := ta.Resign(context.Background()); err != nil {
		t.Fatal(err)
	}
	tb := <-won
	if tb == nil {
		t.FailNow()
	}
	defer tb.Close()
	if tb.Epoch != 43 {
		t.Fatalf("b's term at epoch %d, want 43", tb.Epoch)
	}
	if st := a.Status(context.Background()); st.Holder != "b" || len(st.Endpoints) != 3 || !st.Endpoints[0].Reachable {
		t.Fatalf("status %+v", st)
	}
}

func TestOneMemberDownChangesNothing(t *testing.T) {
	c := testetcd.Start(t, 3)
	a := newArbiter(t, c.Endpoints())
	term := campaign(t, a, "a", 0)
	c.Kill(0)
	// Renewals go on through the other members: wait for three more.
	a.mu.Lock()
	ok0 := a.renewOK
	a.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !term.Valid() {
			t.Fatalf("the term ended with one member of three down: %s", term.Why())
		}
		a.mu.Lock()
		ok := a.renewOK
		a.mu.Unlock()
		if ok >= ok0+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewals after a member was killed (%d before)", ok0)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Without a quorum (two members of three down, or every member frozen) no
// renewal succeeds: the term is invalid by RenewDeadline, before its lease
// could expire.
func TestNoQuorumEndsTheTermByTheRenewDeadline(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(c *testetcd.Cluster)
	}{
		{"two members killed", func(c *testetcd.Cluster) { c.Kill(1); c.Kill(2) }},
		{"every member frozen", func(c *testetcd.Cluster) { c.Freeze(0); c.Freeze(1); c.Freeze(2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testetcd.Start(t, 3)
			a := newArbiter(t, c.Endpoints())
			term := campaign(t, a, "a", 0)
			at := time.Now()
			tc.fault(c)
			select {
			case <-term.Lost():
			case <-time.After(testTTL + 5*time.Second):
				t.Fatal("the term outlived its lease without a quorum")
			}
			took := time.Since(at)
			if term.Valid() {
				t.Fatal("a lost term is valid")
			}
			// The lease at etcd lasts at least TTL from the last renewal
			// that succeeded: the term ended well before that.
			if since := time.Since(term.last()); since >= testTTL {
				t.Fatalf("the term ended %s after its last renewal, not before the TTL (%s)", since, testTTL)
			}
			t.Logf("term over %s after the fault: %s", took.Round(time.Millisecond), term.Why())
			if tc.name == "every member frozen" {
				c.Thaw(0)
				c.Thaw(1)
				c.Thaw(2)
			}
		})
	}
}

// The holder cut from etcd stops acting (Valid false) before another
// candidate can win (I8 at the arbiter).
func TestTheHolderCutFromEtcdIsInvalidBeforeAnotherWins(t *testing.T) {
	c := testetcd.Start(t, 3)
	var proxies []*cutProxy
	var viaProxy []string
	for _, ep := range c.Endpoints() {
		p := newCutProxy(t, strings.TrimPrefix(ep, "http://"))
		proxies = append(proxies, p)
		viaProxy = append(viaProxy, "http://"+p.addr())
	}
	a, b := newArbiter(t, viaProxy), newArbiter(t, c.Endpoints())
	ta := campaign(t, a, "a", 0)
	var invalidAt time.Time
	var mu sync.Mutex
	stop := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !ta.Valid() {
				mu.Lock()
				if invalidAt.IsZero() {
					invalidAt = time.Now()
				}
				mu.Unlock()
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for _, p := range proxies {
		p.cut()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tb, err := b.Campaign(ctx, "b", 0)
	wonAt := time.Now()
	close(stop)
	<-watchDone
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	mu.Lock()
	defer mu.Unlock()
	if invalidAt.IsZero() || !invalidAt.Before(wonAt) {
		t.Fatalf("a was still valid when b won (a invalid at %v, b won at %v): two primaries", invalidAt, wonAt)
	}
	if tb.Epoch <= ta.Epoch {
		t.Fatalf("b's epoch %d not above a's %d", tb.Epoch, ta.Epoch)
	}
	t.Logf("a invalid %s before b won; epochs %d then %d", wonAt.Sub(invalidAt).Round(time.Millisecond), ta.Epoch, tb.Epoch)
}

func TestCampaignWaitsAndHonoursItsContext(t *testing.T) {
	c := testetcd.Start(t, 3)
	a, b := newArbiter(t, c.Endpoints()), newArbiter(t, c.Endpoints())
	campaign(t, a, "a", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := b.Campaign(ctx, "b", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("campaign while another holds: %v, want the context's deadline", err)
	}
}

// cutProxy forwards TCP to target until cut (then it drops every
// connection and refuses new ones).
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	isCut  bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", testports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.isCut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isCut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestReclaimKeepsAnUntouchedEpochAndRaisesAMovedOne(t *testing.T) {
	c := testetcd.Start(t, 3)
	a, b := newArbiter(t, c.Endpoints()), newArbiter(t, c.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ta := campaign(t, a, "a", 6)
	if ta.Epoch != 7 {
		t.Fatalf("first term epoch %d, want 7", ta.Epoch)
	}
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// Nobody held a term since: a's epoch stays.
	ta2, err := a.Reclaim(ctx, "a", 7)
	if err != nil {
		t.Fatal(err)
	}
	if ta2.Epoch != 7 {
		t.Fatalf("reclaimed epoch %d, want 7 kept", ta2.Epoch)
	}
	if err := ta2.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	tb := campaign(t, b, "b", 0)
	if tb.Epoch != 8 {
		t.Fatalf("b's epoch %d, want 8", tb.Epoch)
	}
	if err := tb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// b held a term: a reclaiming its old epoch gets a higher one.
	ta3, err := a.Reclaim(ctx, "a", 7)
	if err != nil {
		t.Fatal(err)
	}
	defer ta3.Close()
	if ta3.Epoch != 9 {
		t.Fatalf("reclaim after another term: epoch %d, want 9", ta3.Epoch)
	}
}

func TestALostCampaignGivesItsLeaseBack(t *testing.T) {
	c := testetcd.Start(t, 3)
	a, b := newArbiter(t, c.Endpoints()), newArbiter(t, c.Endpoints())
	campaign(t, a, "a", 0)
	leases := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := b.cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Leases)
	}
	before := leases()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := b.Campaign(ctx, "b", 0); err == nil {
		t.Fatal("b won while a holds the election")
	}
	// The revoke is applied through raft; the lease list is each
	// member's own, so another member may show it a moment later. A
	// lease left to expire would stay for the whole TTL (4 s): wait well
	// under it.
	deadline := time.Now().Add(testTTL / 4)
	for {
		after := leases()
		if after == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d leases after a lost campaign, %d before: the campaign's lease is left to expire", after, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A campaign that waited for the holder's lease to run out is valid when
// it wins: its validity counts from a renewal after the win.
func TestATermWonAfterAWaitIsValid(t *testing.T) {
	c := testetcd.Start(t, 3)
	a, b := newArbiter(t, c.Endpoints()), newArbiter(t, c.Endpoints())
	ta := campaign(t, a, "a", 0)
	won := make(chan *Term, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tb, err := b.Campaign(ctx, "b", 0)
		if err != nil {
			t.Error(err)
		}
		won <- tb
	}()
	time.Sleep(testDeadline + 500*time.Millisecond) // b waits longer than a renew deadline
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	tb := <-won
	if tb == nil {
		return
	}
	defer tb.Close()
	if !tb.Valid() {
		t.Fatal("the term is invalid the moment it was won")
	}
}
