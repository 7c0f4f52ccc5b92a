// Package health runs a server's health checks (the checks: of tandem.yaml)
// and computes its effective priority: the configured priority lowered by
// the checks that are down, according to the health: mode (see Effective).
//
// A Checker runs every check every interval, one goroutine per check, each
// owned by Run. A probe never overlaps the next run of its check: the next
// run starts only after the last one returned (a tick that fell due
// meanwhile starts it at once). A check goes down after Fall consecutive
// failures and comes back up after Rise consecutive successes.
//
// Every check starts up: a node that has just started has not failed
// anything yet, and a restart must not make a healthy primary hand over (or
// a healthy backup ineligible) for the Fall × Interval it takes to prove
// itself. A check that really fails goes down after Fall probes, like one
// that fails later.
//
// Besides the configured checks there is a synthetic check named "service"
// (config.ServiceCheckName), fed by SetService: it is down while the last
// service.start failed. It counts in down and total only while it is down,
// so a node whose service started (or that has no service) is rated on its
// checks alone, and a failed start takes the effective priority to 0 in
// mode all (and lowers it in the others).
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/clock"
)

// MaxOutput bounds a check's output as kept in CheckStatus.Output (bytes).
const MaxOutput = 512

// Effective is the effective priority of a server with the given
// configured priority when down of its total checks are down, in mode
// (config.HealthAll, HealthOne or HealthProgressive):
//
//   - all: priority while no check is down, else 0;
//   - one: 0 only when every check is down, else priority;
//   - progressive: priority × (1 − down/total), rounded down; 0 when all
//     are down.
//
// With no checks (total 0) it is priority in every mode. An unknown mode is
// taken as all (the strictest). down is clamped to 0..total.
func Effective(priority int, mode string, down, total int) int {
	if total <= 0 {
		return priority
	}
	down = max(0, min(down, total))
	switch mode {
	case config.HealthOne:
		if down == total {
			return 0
		}
		return priority
	case config.HealthProgressive:
		return priority * (total - down) / total
	default:
		if down > 0 {
			return 0
		}
		return priority
	}
}

// ProbeFunc runs one probe of a check: nil error is a success. output is
// what the probe printed or answered (bounded and cut to one line by the
// Checker).
type ProbeFunc func(ctx context.Context, c config.Check) (output string, err error)

// Options are a Checker's seams; all are optional.
type Options struct {
	// Clock paces the checks and stamps CheckStatus.Since (default
	// clock.Real{}).
	Clock clock.Clock
	// Probe runs one probe (default Probe, the real prober). The Checker
	// passes a context that ends after the check's Timeout or when Run's
	// context ends.
	Probe ProbeFunc
	// Log gets a line when a check goes down or up (default: discarded).
	Log logrus.FieldLogger
	// OnChange is called whenever the effective priority or any check's
	// up/down changes (a change of the service check included). It is
	// called from goroutines owned by Run, never two at a time, never with
	// the Checker's lock held (it may call Effective and Status), and never
	// from inside SetService. It should not block for long: that check's
	// next probe waits for it.
	OnChange func()
}

// CheckStatus is one check's state, as status JSON shows it.
type CheckStatus struct {
	Name string `json:"name"`
	Up   bool   `json:"up"`
	// Since is when Up last changed, or when the Checker was made.
	Since time.Time `json:"since"`
	// Output is the last probe's output, or its error (and output), at
	// most MaxOutput bytes of one line.
	Output string `json:"output"`
	// Failures and Successes are the consecutive failed and successful
	// probes up to now (one of them is 0).
	Failures  int `json:"failures"`
	Successes int `json:"successes"`
}

// Checker runs the checks of one server and keeps their state. Make it
// with New; its methods are safe for concurrent use.
type Checker struct {
	checks   []config.Check
	priority int
	mode     string
	clock    clock.Clock
	probe    ProbeFunc
	log      logrus.FieldLogger
	onChange func()

	// afterProbe, set by tests before Run, is called (from the check's
	// goroutine) once a probe's result was recorded and OnChange returned.
	afterProbe func(name string)

	notifyMu sync.Mutex // one OnChange at a time
	kick     chan struct{}

	mu         sync.Mutex
	state      []CheckStatus
	service    CheckStatus
	serviceSet bool // SetService was called: Status lists the service check
}

// New returns a Checker for checks (validated, as config.Validate leaves
// them) of a server with the configured priority and health mode. Every
// check starts up. Call Run to run them.
func New(checks []config.Check, priority int, mode string, o Options) *Checker {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Probe == nil {
		o.Probe = Probe
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Log = l
	}
	c := &Checker{
		checks:   append([]config.Check(nil), checks...),
		priority: priority,
		mode:     mode,
		clock:    o.Clock,
		probe:    o.Probe,
		log:      o.Log,
		onChange: o.OnChange,
		kick:     make(chan struct{}, 1),
	}
	now := c.clock.Now()
	for _, k := range c.checks {
		c.state = append(c.state, CheckStatus{Name: k.Name, Up: true, Since: now})
	}
	c.service = CheckStatus{Name: config.ServiceCheckName, Up: true, Since: now}
	return c
}

// Priority is the configured priority.
func (c *Checker) Priority() int { return c.priority }

// Mode is the configured health mode.
func (c *Checker) Mode() string { return c.mode }

// Effective is the effective priority now (see the package function
// Effective and the service check in the package comment).
func (c *Checker) Effective() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.effectiveLocked()
}

func (c *Checker) effectiveLocked() int {
	down, total := 0, len(c.state)
	for _, s := range c.state {
		if !s.Up {
			down++
		}
	}
	if !c.service.Up {
		down++
		total++
	}
	return Effective(c.priority, c.mode, down, total)
}

// Status is every check's state, in the configured order, followed by the
// service check once SetService has been called.
func (c *Checker) Status() []CheckStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]CheckStatus(nil), c.state...)
	if c.serviceSet {
		out = append(out, c.service)
	}
	return out
}

// SetService records the outcome of the last service.start: failed (with
// its output or error) takes the service check down at once, success
// brings it up at once (no fall or rise: a start is one decisive attempt).
// A change is reported to OnChange by Run's goroutine, not from here.
func (c *Checker) SetService(failed bool, output string) {
	c.mu.Lock()
	before := c.effectiveLocked()
	s := &c.service
	c.serviceSet = true
	s.Output = bound(output)
	if failed {
		s.Failures++
		s.Successes = 0
	} else {
		s.Successes++
		s.Failures = 0
	}
	changed := s.Up == failed
	if changed {
		s.Up = !failed
		s.Since = c.clock.Now()
	}
	eff := c.effectiveLocked()
	c.mu.Unlock()
	if changed {
		c.logChange(*s, before, eff)
	}
	if changed || eff != before {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// Run runs every check until ctx ends: each at once, then every Interval.
// It returns when ctx has ended and every probe it started has returned.
// Call it once.
func (c *Checker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range c.checks {
		t := c.clock.NewTicker(c.checks[i].Interval)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer t.Stop()
			c.loop(ctx, i, t)
		}()
	}
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-c.kick:
			c.notify()
		}
	}
}

func (c *Checker) loop(ctx context.Context, i int, t clock.Ticker) {
	for {
		c.runOnce(ctx, i)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

func (c *Checker) runOnce(ctx context.Context, i int) {
	k := c.checks[i]
	pctx, cancel := context.WithTimeout(ctx, k.Timeout)
	out, err := c.probe(pctx, k)
	cancel()
	if ctx.Err() != nil {
		return // stopping: a probe cut short is no verdict
	}
	c.mu.Lock()
	before := c.effectiveLocked()
	s := &c.state[i]
	if err != nil {
		msg := err.Error()
		if out = firstLine(out); out != "" && !strings.Contains(msg, out) {
			msg += ": " + out
		}
		s.Output = bound(msg)
		s.Failures++
		s.Successes = 0
	} else {
		s.Output = bound(out)
		s.Successes++
		s.Failures = 0
	}
	changed := false
	switch {
	case s.Up && s.Failures >= k.Fall:
		s.Up, changed = false, true
	case !s.Up && s.Successes >= k.Rise:
		s.Up, changed = true, true
	}
	if changed {
		s.Since = c.clock.Now()
	}
	snap := *s
	eff := c.effectiveLocked()
	c.mu.Unlock()
	if changed {
		c.logChange(snap, before, eff)
	}
	if changed || eff != before {
		c.notify()
	}
	if c.afterProbe != nil {
		c.afterProbe(k.Name)
	}
}

func (c *Checker) notify() {
	if c.onChange == nil {
		return
	}
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.onChange()
}

func (c *Checker) logChange(s CheckStatus, before, after int) {
	l := c.log.WithFields(logrus.Fields{
		"check": s.Name, "output": s.Output,
		"effective_priority": after, "was": before, "priority": c.priority, "health": c.mode,
	})
	if s.Up {
		l.WithField("successes", s.Successes).Info("health check up")
	} else {
		l.WithField("failures", s.Failures).Warn("health check down")
	}
}

// firstLine is the first non-empty line of s, trimmed.
func firstLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

// bound cuts s to its first line and at most MaxOutput bytes of valid
// UTF-8.
func bound(s string) string {
	s = firstLine(s)
	if len(s) > MaxOutput {
		s = s[:MaxOutput]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return strings.ToValidUTF8(s, "?")
}

// Probe is the real prober, by the kind of c.Command (config.Check.Probe):
//
//   - a shell command runs with /bin/sh -c in a process group of its own;
//     exit status 0 is a success. Past c.Timeout (or when ctx ends) the
//     whole group is killed. output is the first line of what it printed
//     (stdout and stderr).
//   - http: a GET (no proxy, no kept-alive connection) that must answer
//     2xx within c.Timeout; output is the status ("200 OK").
//   - tcp: a connect to HOST:PORT within c.Timeout.
func Probe(ctx context.Context, c config.Check) (string, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = config.DefaultCheckTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch kind, target := c.Probe(); kind {
	case config.CheckHTTP:
		return probeHTTP(ctx, target, timeout)
	case config.CheckTCP:
		return probeTCP(ctx, target, timeout)
	default:
		return probeShell(ctx, target, timeout)
	}
}

// head keeps the first max bytes written to it.
type head struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (h *head) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - h.buf.Len(); room > 0 {
		h.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (h *head) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}

// ErrTimeout is wrapped by a probe's error when it ran past its timeout.
var ErrTimeout = errors.New("health: timeout")

func probeShell(ctx context.Context, command string, timeout time.Duration) (string, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out := &head{max: 4 * MaxOutput}
	cmd.Stdout = out
	cmd.Stderr = out
	err := cmd.Run()
	o := bound(out.String())
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return o, fmt.Errorf("%w: killed after %s", ErrTimeout, timeout)
	case ctx.Err() != nil:
		return o, ctx.Err()
	}
	return o, err
}

// httpTransport: no proxy (a health check reaches its target directly),
// a new connection every time (the check proves the service accepts one).
var httpTransport = &http.Transport{Proxy: nil, DisableKeepAlives: true}

func probeHTTP(ctx context.Context, raw string, timeout time.Duration) (string, error) {
	shown := config.RedactURL(raw)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %v", shown, err)
	}
	req.Header.Set("User-Agent", "tandem-health")
	client := &http.Client{Transport: httpTransport, Timeout: timeout}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", fmt.Errorf("%w: GET %s: no answer within %s", ErrTimeout, shown, timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop its `Get "URL":` (the URL may hold a password)
		}
		return "", fmt.Errorf("GET %s: %v", shown, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	status := resp.Status
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return status, fmt.Errorf("GET %s: answered %s, want 2xx", shown, status)
	}
	return status, nil
}

func probeTCP(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", fmt.Errorf("%w: connect %s: no answer within %s", ErrTimeout, addr, timeout)
		}
		return "", fmt.Errorf("connect %s: %v", addr, err)
	}
	_ = conn.Close()
	return "connected to " + addr, nil
}
