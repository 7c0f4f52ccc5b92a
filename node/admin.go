package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/admintoken"
	"github.com/tandem-ha/tandem/primary"
)

// Controller is what the admin API asks of a running node.
type Controller interface {
	Status() Status
	Metrics() Metrics
	// Switchover hands the primary role to the backup named to (its node
	// name or failover id), or with to empty to the best backup.
	Switchover(ctx context.Context, to string) error
	SetMaintenance(on bool) error
	Agents() []primary.AgentView
}

// Metrics are the counters exported at GET /metrics.
type Metrics struct {
	HeartbeatsSent     uint64
	HeartbeatsReceived uint64
	HeartbeatsIgnored  uint64
	Takeovers          uint64
	AgentRewritesOK    uint64
	AgentRewritesFail  uint64
	SignatureFailures  uint64
	MessagesDropped    uint64
}

// AdminOption configures AdminHandler.
type AdminOption func(*adminConfig)

type adminConfig struct {
	token string // required by the mutating endpoints; "" refuses them all
	addr  string // the configured admin address (HOST:PORT)
}

// AdminToken sets the token that POST /switchover and POST /maintenance
// require as "Authorization: Bearer TOKEN". Without it (or with ""),
// every mutating request is refused.
func AdminToken(tok string) AdminOption { return func(c *adminConfig) { c.token = tok } }

// AdminAddress is the configured admin listen address. A mutating request
// must name it (or localhost / 127.0.0.1 / [::1], or the address it came in
// on) with the port it came in on, in its Host header.
func AdminAddress(addr string) AdminOption { return func(c *adminConfig) { c.addr = addr } }

// adminOptions loads DATA/admin.token, creating it on the first start, and
// returns the options of this node's admin API.
func (n *Node) adminOptions() ([]AdminOption, error) {
	tok, created, err := admintoken.LoadOrCreate(n.cfg.DataDir)
	if err != nil {
		return nil, badInput(fmt.Errorf("admin token: %w", err))
	}
	if created {
		n.entry().WithField("file", admintoken.Path(n.cfg.DataDir)).Info("created the admin token (mode 0600): POST /switchover and /maintenance require it")
	}
	return []AdminOption{AdminToken(tok), AdminAddress(n.cfg.Admin)}, nil
}

// maxAdminBody bounds the body of a mutating request.
const maxAdminBody = 4 << 10

// AdminHandler serves the admin API:
//
//	GET  /status           the status JSON
//	GET  /healthz/primary  200 only while this node is the active, unfenced primary
//	GET  /agents           the live agent registry (primary)
//	GET  /metrics          Prometheus text
//	POST /switchover       hand the primary role to the backup now
//	POST /maintenance      ?state=on|off, or a JSON body {"state":"on"}: pause/resume automatic failover
//
// The GET endpoints are open. The POST ones require the admin token
// (Authorization: Bearer TOKEN) and refuse what a web page could send: a
// Host that is not the admin address (DNS rebinding: 421), a foreign
// Origin or Sec-Fetch-Site (403), a body that is not application/json or a
// simple-form Content-Type (415), a body over 4 KiB (413).
func AdminHandler(c Controller, opts ...AdminOption) http.Handler {
	var cfg adminConfig
	for _, o := range opts {
		o(&cfg)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			httpError(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		writeJSON(w, http.StatusOK, c.Status())
	})
	mux.HandleFunc("/healthz/primary", func(w http.ResponseWriter, r *http.Request) {
		s := c.Status()
		if s.Role == "primary" && s.FencedBy == nil {
			writeJSON(w, http.StatusOK, map[string]any{"primary": true, "node": s.Node, "epoch": s.Epoch})
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"primary": false, "node": s.Node, "role": s.Role, "epoch": s.Epoch})
	})
	mux.HandleFunc("/agents", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"agents": c.Agents()})
	})
	// A private registry per handler (per node): see metrics.go.
	mux.Handle("/metrics", metricsHandler(NewRegistry(c, nil)))
	mux.HandleFunc("/switchover", cfg.guard(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		to := r.URL.Query().Get("to")
		if len(to) > 256 {
			httpError(w, http.StatusBadRequest, "to: a node name or failover id of at most 256 bytes")
			return
		}
		if err := c.Switchover(ctx, to); err != nil {
			code := http.StatusConflict
			if errors.Is(err, context.DeadlineExceeded) {
				code = http.StatusGatewayTimeout
			}
			httpError(w, code, err.Error())
			return
		}
		msg := "switchover started: the backup is taking over"
		if to != "" {
			msg = "switchover started: " + to + " is taking over"
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"result": msg})
	}))
	mux.HandleFunc("/maintenance", cfg.guard(func(w http.ResponseWriter, r *http.Request, body []byte) {
		v := r.URL.Query().Get("state")
		if v == "" {
			v = maintenanceBody(body)
		}
		var on bool
		switch v {
		case "on", "true", "1":
			on = true
		case "off", "false", "0":
		default:
			httpError(w, http.StatusBadRequest, fmt.Sprintf("maintenance: expected on or off, got %q", v))
			return
		}
		if err := c.SetMaintenance(on); err != nil {
			httpError(w, http.StatusConflict, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"maintenance": on})
	}))
	return mux
}

// maintenanceBody reads the state from a JSON body: {"state":"on"},
// {"maintenance":true}, "on", or a bare on/off.
func maintenanceBody(b []byte) string {
	var obj struct {
		State       *string `json:"state"`
		Maintenance *bool   `json:"maintenance"`
	}
	if json.Unmarshal(b, &obj) == nil {
		switch {
		case obj.State != nil:
			return *obj.State
		case obj.Maintenance != nil && *obj.Maintenance:
			return "on"
		case obj.Maintenance != nil:
			return "off"
		}
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		return s
	}
	return strings.TrimSpace(string(b))
}

// guard wraps a mutating endpoint: POST only, then the Host, Origin,
// Content-Type, body size and token checks; next gets the body.
func (cfg *adminConfig) guard(next func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			httpError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		if !cfg.hostAllowed(r, r.Host) {
			httpError(w, http.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not this admin API's address: use http://127.0.0.1:PORT or the configured admin address", r.Host))
			return
		}
		if o := r.Header.Values("Origin"); len(o) > 0 && !cfg.originAllowed(r, o) {
			httpError(w, http.StatusForbidden, "cross-origin request refused")
			return
		}
		if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
			httpError(w, http.StatusForbidden, "cross-site request refused (Sec-Fetch-Site: "+s+")")
			return
		}
		hasBody := r.ContentLength != 0 // -1: unknown length (chunked) counts as a body
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				httpError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q refused: send no body, or a body with Content-Type: application/json", ct))
				return
			}
		} else if hasBody {
			httpError(w, http.StatusUnsupportedMediaType, "a request body needs Content-Type: application/json")
			return
		}
		if r.ContentLength > maxAdminBody {
			httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxAdminBody))
			return
		}
		if !cfg.authorized(w, r) {
			return
		}
		var body []byte
		if hasBody {
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
			if err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxAdminBody))
					return
				}
				httpError(w, http.StatusBadRequest, "reading the request body: "+err.Error())
				return
			}
			body = b
		}
		next(w, r, body)
	}
}

// authorized checks "Authorization: Bearer TOKEN"; on failure it has
// answered 401 (or 403 when no token is configured at all).
func (cfg *adminConfig) authorized(w http.ResponseWriter, r *http.Request) bool {
	if cfg.token == "" {
		httpError(w, http.StatusForbidden, "this admin API has no admin token configured: mutating requests are disabled")
		return false
	}
	const fix = "send Authorization: Bearer TOKEN with the token in DATA/admin.token (tandem CLI: --config FILE, or --token-file FILE)"
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if auth == "" || !ok || !strings.EqualFold(scheme, "Bearer") {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tandem admin"`)
		httpError(w, http.StatusUnauthorized, "admin token required: "+fix)
		return false
	}
	if !admintoken.Equal(strings.TrimSpace(tok), cfg.token) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tandem admin", error="invalid_token"`)
		httpError(w, http.StatusUnauthorized, "wrong admin token: "+fix)
		return false
	}
	return true
}

// hostAllowed reports whether hostport (a Host header, or an Origin's
// host) names this admin API: localhost, 127.0.0.1, [::1], the configured
// admin host or the local address the request came in on, with the port
// the request came in on (or the configured one).
func (cfg *adminConfig) hostAllowed(r *http.Request, hostport string) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, "80"
	}
	host = strings.ToLower(host)
	if host == "" {
		return false
	}
	names := []string{"localhost", "127.0.0.1", "::1"}
	wantPort := ""
	if h, p, err := net.SplitHostPort(cfg.addr); err == nil {
		if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
			names = append(names, strings.ToLower(h))
		}
		if p != "0" {
			wantPort = p
		}
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if h, p, err := net.SplitHostPort(la.String()); err == nil {
			names = append(names, strings.ToLower(h))
			wantPort = p
		}
	}
	if wantPort != "" && port != wantPort {
		return false
	}
	for _, n := range names {
		if host == n {
			return true
		}
	}
	return false
}

// originAllowed: every Origin must be http://ADMIN-ADDRESS itself.
func (cfg *adminConfig) originAllowed(r *http.Request, origins []string) bool {
	for _, o := range origins {
		u, err := url.Parse(o)
		if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") {
			return false
		}
		if !cfg.hostAllowed(r, u.Host) {
			return false
		}
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// AdminLimits bound the admin HTTP server. Zero fields take the defaults
// of DefaultAdminLimits.
type AdminLimits struct {
	ReadHeaderTimeout time.Duration // a client must send its headers within this
	ReadTimeout       time.Duration // ... and its whole request within this
	WriteTimeout      time.Duration // a response (a switchover waits up to 10s) within this
	IdleTimeout       time.Duration // a keep-alive connection is closed after this idle time
	MaxHeaderBytes    int
	MaxConns          int // connections served at once; more wait in the listen backlog
}

// DefaultAdminLimits are the admin server's limits.
var DefaultAdminLimits = AdminLimits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      20 * time.Second,
	IdleTimeout:       60 * time.Second,
	MaxHeaderBytes:    16 << 10,
	MaxConns:          64,
}

func (l AdminLimits) withDefaults() AdminLimits {
	d := DefaultAdminLimits
	if l.ReadHeaderTimeout > 0 {
		d.ReadHeaderTimeout = l.ReadHeaderTimeout
	}
	if l.ReadTimeout > 0 {
		d.ReadTimeout = l.ReadTimeout
	}
	if l.WriteTimeout > 0 {
		d.WriteTimeout = l.WriteTimeout
	}
	if l.IdleTimeout > 0 {
		d.IdleTimeout = l.IdleTimeout
	}
	if l.MaxHeaderBytes > 0 {
		d.MaxHeaderBytes = l.MaxHeaderBytes
	}
	if l.MaxConns > 0 {
		d.MaxConns = l.MaxConns
	}
	return d
}

// ServeAdmin listens on addr and serves h until ctx ends, within
// DefaultAdminLimits (or limits[0], zero fields defaulted). It returns the
// bound address once listening, and a function that waits for shutdown.
func ServeAdmin(ctx context.Context, addr string, h http.Handler, limits ...AdminLimits) (string, func(), error) {
	var lim AdminLimits
	if len(limits) > 0 {
		lim = limits[0]
	}
	lim = lim.withDefaults()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(newLimitListener(ln, lim.MaxConns))
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	return ln.Addr().String(), func() { <-done }, nil
}

// limitListener accepts at most n connections at once: Accept waits for
// one of them to close (golang.org/x/net/netutil.LimitListener).
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
