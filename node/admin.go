package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/primary"
)

// Controller is what the admin API asks of a running node.
type Controller interface {
	Status() Status
	Metrics() Metrics
	Switchover(ctx context.Context) error
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

// AdminHandler serves the admin API:
//
//	GET  /status           the status JSON
//	GET  /healthz/primary  200 only while this node is the active, unfenced primary
//	GET  /agents           the live agent registry (primary)
//	GET  /metrics          Prometheus text
//	POST /switchover       hand the primary role to the backup now
//	POST /maintenance      body or ?state= "on"/"off": pause/resume automatic failover
func AdminHandler(c Controller) http.Handler {
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
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, renderMetrics(c.Status(), c.Metrics()))
	})
	mux.HandleFunc("/switchover", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			httpError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		if err := c.Switchover(ctx); err != nil {
			code := http.StatusConflict
			if errors.Is(err, context.DeadlineExceeded) {
				code = http.StatusGatewayTimeout
			}
			httpError(w, code, err.Error())
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"result": "switchover started: the backup is taking over"})
	})
	mux.HandleFunc("/maintenance", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			httpError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		v := r.URL.Query().Get("state")
		if v == "" {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 64))
			v = strings.TrimSpace(string(b))
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
	})
	return mux
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

func renderMetrics(s Status, m Metrics) string {
	var b strings.Builder
	g := func(name, help, typ string, v any, labels string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s%s %v\n", name, help, name, typ, name, labels, v)
	}
	b01 := func(x bool) int {
		if x {
			return 1
		}
		return 0
	}
	for _, r := range []string{"primary", "backup", "taking-over", "fenced", "starting"} {
		if r == "primary" {
			fmt.Fprintf(&b, "# HELP tandem_role 1 for the role this node holds.\n# TYPE tandem_role gauge\n")
		}
		fmt.Fprintf(&b, "tandem_role{role=%q} %d\n", r, b01(s.Role == r))
	}
	g("tandem_epoch", "This node's epoch (fencing token).", "gauge", s.Epoch, "")
	g("tandem_fenced", "1 when a higher epoch fenced this node.", "gauge", b01(s.Role == "fenced"), "")
	g("tandem_maintenance", "1 while automatic failover is paused.", "gauge", b01(s.Maintenance), "")
	g("tandem_backup_configured", "1 when a backup replied within 2 x reply_period.", "gauge", b01(s.BackupConfigured), "")
	age := int64(-1)
	if s.Primary != nil {
		age = s.Primary.LastHeartbeatAgeMS
	}
	if age >= 0 {
		g("tandem_last_heartbeat_age_seconds", "Seconds since the last counted heartbeat from the primary (backup).", "gauge", float64(age)/1000, "")
	} else {
		g("tandem_last_heartbeat_age_seconds", "Seconds since the last counted heartbeat from the primary (backup); -1 never.", "gauge", -1, "")
	}
	g("tandem_heartbeats_sent_total", "Heartbeats published as primary.", "counter", m.HeartbeatsSent, "")
	g("tandem_heartbeats_received_total", "Heartbeats received as backup.", "counter", m.HeartbeatsReceived, "")
	g("tandem_heartbeats_ignored_total", "Heartbeats received as backup but not taken as the primary's (stale epoch, duplicate or reordered seq, unknown server).", "counter", m.HeartbeatsIgnored, "")
	g("tandem_takeovers_total", "Takeovers completed by this node.", "counter", m.Takeovers, "")
	fmt.Fprintf(&b, "# HELP tandem_agent_rewrites_total address.yaml rewrites by result.\n# TYPE tandem_agent_rewrites_total counter\n")
	fmt.Fprintf(&b, "tandem_agent_rewrites_total{result=\"ok\"} %d\ntandem_agent_rewrites_total{result=\"failed\"} %d\n", m.AgentRewritesOK, m.AgentRewritesFail)
	g("tandem_agents_managed", "Managed address.yaml files.", "gauge", s.Agents.Managed, "")
	g("tandem_agents_connected", "Agents that reported status recently.", "gauge", s.Agents.Connected, "")
	g("tandem_signature_failures_total", "Messages dropped for a missing or bad signature.", "counter", m.SignatureFailures, "")
	g("tandem_messages_dropped_total", "Messages dropped as malformed or invalid.", "counter", m.MessagesDropped, "")
	return b.String()
}

// ServeAdmin listens on addr and serves h until ctx ends. It returns the
// bound address once listening, and a function that waits for shutdown.
func ServeAdmin(ctx context.Context, addr string, h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), func() { <-done }, nil
}
