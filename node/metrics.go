package node

import (
	"github.com/tandem-ha/tandem/internal/eventlog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-ha/tandem/failoverid"
)

// GET /metrics is served from a private prometheus.Registry per admin
// handler (so per node: tests run several nodes in one process). It holds
//
//   - the process and Go collectors (process_*, go_*);
//   - a snapshot collector that reads the node's Status() and Metrics()
//     once per scrape (every tandem_* series but the takeover timings);
//   - the node's Telemetry: the takeover histograms, fed as takeovers
//     happen, and the heartbeat timing configuration.

// The takeover phases, in order, as the phase label of
// tandem_takeover_phase_duration_seconds. Each is the time from the end of
// the previous phase (the takeover decision for the first one) to the end
// of this one.
const (
	PhaseEpochPersisted  = "epoch_persisted"  // decision → epoch = max(own, seen)+1 on disk
	PhaseBeforeHook      = "before_hook"      // → before_takeover hook done (only when one is configured)
	PhaseFilesRewritten  = "files_rewritten"  // → every managed address.yaml CAS-rewritten
	PhaseLocationDormant = "location_dormant" // → primary_location renamed .dormant
	PhaseFirstHeartbeat  = "first_heartbeat"  // → the first heartbeat published as primary
)

// TakeoverPhases lists the phases in order.
var TakeoverPhases = []string{PhaseEpochPersisted, PhaseBeforeHook, PhaseFilesRewritten, PhaseLocationDormant, PhaseFirstHeartbeat}

// phaseOfStep maps a takeover journal step to the phase that ends with it.
var phaseOfStep = map[string]string{
	failoverid.StepEpochPersisted:   PhaseEpochPersisted,
	failoverid.StepBeforeHook:       PhaseBeforeHook,
	failoverid.StepAgentsRewritten:  PhaseFilesRewritten,
	failoverid.StepLocationDormant:  PhaseLocationDormant,
	failoverid.StepPrimaryHeartbeat: PhaseFirstHeartbeat,
}

// takeoverBuckets span a lab takeover (milliseconds) to a slow hook (minutes).
var takeoverBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// Telemetry is what a node records as it happens: the takeover's total
// duration and that of each phase. It also exports the heartbeat timing
// configuration, so that alerts and dashboards can compare with the window.
// It is a prometheus.Collector; the zero value is not usable (NewTelemetry).
type Telemetry struct {
	period, window time.Duration

	total  prometheus.Histogram
	phases *prometheus.HistogramVec
	last   prometheus.Gauge

	// The arbiter's lease renewals (exported with an arbiter only).
	arbiter       bool
	renew         prometheus.Histogram
	renewFailures prometheus.Counter

	mu       sync.Mutex
	began    time.Time        // the current takeover's decision; zero: none being timed
	mark     time.Time        // the end of the last phase observed
	phasesMS map[string]int64 // the current takeover's phases so far (ms), for the event log
}

// NewTelemetry returns an empty Telemetry for a node with this heartbeat
// period and fail window (zero: not exported).
func NewTelemetry(period, window time.Duration) *Telemetry {
	t := &Telemetry{
		period: period, window: window,
		total: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tandem_takeover_duration_seconds",
			Help:    "Takeovers by this node: from the decision to take over to the first heartbeat published as primary.",
			Buckets: takeoverBuckets,
		}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_takeover_phase_duration_seconds",
			Help:    "Duration of each phase of a takeover (epoch_persisted, before_hook, files_rewritten, location_dormant, first_heartbeat), from the end of the previous one.",
			Buckets: takeoverBuckets,
		}, []string{"phase"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tandem_last_takeover_duration_seconds",
			Help: "Duration of this node's last takeover (decision to first heartbeat); -1 when none since the process started.",
		}),
	}
	t.renew = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tandem_arbiter_renew_duration_seconds",
		Help:    "Lease renewals with the arbiter's etcd: from sending one to its answer (failed ones too).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	t.renewFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_arbiter_renew_failures_total",
		Help: "Lease renewals with the arbiter's etcd that failed or found the lease gone.",
	})
	t.last.Set(-1)
	for _, p := range TakeoverPhases {
		t.phases.WithLabelValues(p) // every phase is exported, at 0, from the start
	}
	return t
}

var (
	descPeriod = prometheus.NewDesc("tandem_heartbeat_period_seconds", "Configured heartbeat.period.", nil, nil)
	descWindow = prometheus.NewDesc("tandem_fail_window_seconds", "Configured heartbeat.fail_window: the silence after which the backup takes over.", nil, nil)
)

// Describe implements prometheus.Collector.
func (t *Telemetry) Describe(ch chan<- *prometheus.Desc) {
	t.total.Describe(ch)
	t.phases.Describe(ch)
	t.last.Describe(ch)
	t.renew.Describe(ch)
	t.renewFailures.Describe(ch)
	ch <- descPeriod
	ch <- descWindow
}

// Collect implements prometheus.Collector.
func (t *Telemetry) Collect(ch chan<- prometheus.Metric) {
	t.total.Collect(ch)
	t.phases.Collect(ch)
	t.last.Collect(ch)
	if t.arbiter {
		t.renew.Collect(ch)
		t.renewFailures.Collect(ch)
	}
	if t.period > 0 {
		ch <- prometheus.MustNewConstMetric(descPeriod, prometheus.GaugeValue, t.period.Seconds())
	}
	if t.window > 0 {
		ch <- prometheus.MustNewConstMetric(descWindow, prometheus.GaugeValue, t.window.Seconds())
	}
}

// EnableArbiter exports the arbiter's renewal series (call before the
// registry is scraped).
func (t *Telemetry) EnableArbiter() { t.arbiter = true }

// ArbiterRenew records one lease renewal (arbiter.Config.OnRenew).
func (t *Telemetry) ArbiterRenew(took time.Duration, ok bool) {
	t.renew.Observe(took.Seconds())
	if !ok {
		t.renewFailures.Inc()
	}
}

// ObserveTakeoverPhase records that a takeover phase (one of
// TakeoverPhases) took d. Unknown phases are ignored.
func (t *Telemetry) ObserveTakeoverPhase(phase string, d time.Duration) {
	if t == nil {
		return
	}
	known := false
	for _, p := range TakeoverPhases {
		known = known || p == phase
	}
	if known {
		t.phases.WithLabelValues(phase).Observe(d.Seconds())
	}
}

// ObserveTakeover records that a takeover took d, decision to first
// heartbeat as primary.
func (t *Telemetry) ObserveTakeover(d time.Duration) {
	if t == nil {
		return
	}
	t.total.Observe(d.Seconds())
	t.last.Set(d.Seconds())
}

// TakeoverBegan starts timing a takeover: now is the decision. Call it for
// a fresh takeover only, not for one resumed after a restart (its phases
// and total are then not observed: the decision was in another process).
func (t *Telemetry) TakeoverBegan(now time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.began, t.mark = now, now
	t.phasesMS = map[string]int64{}
	t.mu.Unlock()
}

// TakeoverStep records that the takeover being timed reached a journal
// step (failoverid.Step*): the phase that ends with it is observed, from
// the previous step (or the decision). StepPrimaryHeartbeat also observes
// the whole takeover and ends the timing. Without TakeoverBegan it does
// nothing.
//
// When the takeover is complete (StepPrimaryHeartbeat) it returns every
// phase's duration in ms and the total, for the event log; otherwise nil.
func (t *Telemetry) TakeoverStep(step string, now time.Time) (phasesMS map[string]int64, total time.Duration) {
	if t == nil {
		return nil, 0
	}
	phase, ok := phaseOfStep[step]
	if !ok {
		return nil, 0
	}
	t.mu.Lock()
	began, mark := t.began, t.mark
	if !began.IsZero() {
		t.mark = now
		t.phasesMS[phase] = now.Sub(mark).Milliseconds()
		if phase == PhaseFirstHeartbeat {
			phasesMS, t.phasesMS = t.phasesMS, nil
			t.began, t.mark = time.Time{}, time.Time{}
		}
	}
	t.mu.Unlock()
	if began.IsZero() {
		return nil, 0
	}
	t.ObserveTakeoverPhase(phase, now.Sub(mark))
	if phase == PhaseFirstHeartbeat {
		t.ObserveTakeover(now.Sub(began))
		return phasesMS, now.Sub(began)
	}
	return nil, 0
}

// telemetry is this node's Telemetry.
func (n *Node) telemetry() *Telemetry { return n.tel }

// takeoverBegan marks a fresh takeover decision (runBackup).
func (n *Node) takeoverBegan() { n.telemetry().TakeoverBegan(n.clock.Now()) }

// takeoverStep marks a journal step reached (failoverid.Step*); the last
// one writes the takeover's phases to the event log.
func (n *Node) takeoverStep(step string) {
	phases, total := n.telemetry().TakeoverStep(step, n.clock.Now())
	if phases == nil {
		return
	}
	st := n.state()
	n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindTakeover, FailoverID: n.id, Epoch: st.Epoch,
		PhasesMS: phases, Detail: "decision to first heartbeat: " + total.Round(time.Millisecond).String()})
}

// telemetrySource is a Controller that records its own Telemetry (*Node).
type telemetrySource interface{ telemetry() *Telemetry }

// NewRegistry returns a private registry that exports c at scrape time,
// the process and Go collectors, and t (nil: the controller's own
// Telemetry when it has one, else an empty one).
func NewRegistry(c Controller, t *Telemetry) *prometheus.Registry {
	if t == nil {
		if ts, ok := c.(telemetrySource); ok {
			t = ts.telemetry()
		} else {
			t = NewTelemetry(0, 0)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		snapshotCollector{c},
		t,
	)
	return reg
}

// metricsHandler serves GET /metrics from reg, in the Prometheus text format.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// snapshotCollector exports the node's Status() and Metrics(), read once
// per scrape. The series names and meanings are those of the hand-written
// exporter it replaced; tests and dashboards read them.
type snapshotCollector struct{ c Controller }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descInfo        = desc("tandem_info", "Always 1: this node's version, name and failover id.", "version", "node", "failover_id")
	descRole        = desc("tandem_role", "1 for the role this node holds.", "role")
	descEpoch       = desc("tandem_epoch", "This node's epoch (fencing token).")
	descFenced      = desc("tandem_fenced", "1 when a higher epoch fenced this node.")
	descMaintenance = desc("tandem_maintenance", "1 while automatic failover is paused.")
	descBackupConf  = desc("tandem_backup_configured", "1 when a backup replied within 2 x reply_period.")
	descHBAge       = desc("tandem_last_heartbeat_age_seconds", "Seconds since the last counted heartbeat from the primary (backup); -1 never.")
	descSilent      = desc("tandem_primary_silent_seconds", "Seconds the backup's failure detector has counted silence from the primary (takeover at tandem_fail_window_seconds); absent on a primary.")
	descPrimEpoch   = desc("tandem_primary_epoch", "The epoch of the primary this backup watches; absent on a primary.")
	descTakingOver  = desc("tandem_takeover_in_progress", "1 while a takeover journal is open on this node.")
	descChannel     = desc("tandem_heartbeat_channel_connected", "1 while the link to the heartbeat channel is up.")
	descSent        = desc("tandem_heartbeats_sent_total", "Heartbeats published as primary.")
	descReceived    = desc("tandem_heartbeats_received_total", "Heartbeats received as backup.")
	descIgnored     = desc("tandem_heartbeats_ignored_total", "Heartbeats received as backup but not taken as the primary's (stale epoch, duplicate or reordered seq, unknown server).")
	descTakeovers   = desc("tandem_takeovers_total", "Takeovers completed by this node.")
	descRewrites    = desc("tandem_agent_rewrites_total", "address.yaml rewrites by result.", "result")
	descManaged     = desc("tandem_agents_managed", "Managed address.yaml files.")
	descConnected   = desc("tandem_agents_connected", "Agents that reported status recently.")
	descTampered    = desc("tandem_agents_tampered", "Managed address.yaml files that claim a token without a valid server signature.")
	descSigFail     = desc("tandem_signature_failures_total", "Messages dropped for a missing or bad signature.")
	descDropped     = desc("tandem_messages_dropped_total", "Messages dropped as malformed or invalid.")
	descPriority    = desc("tandem_priority", "This node's configured priority (0: never takes over automatically).")
	descEffective   = desc("tandem_effective_priority", "This node's effective priority: its priority as its health checks leave it (0: not eligible).")
	descCheckUp     = desc("tandem_check_up", "1 while the health check is up.", "check")
	descBackups     = desc("tandem_group_backups", "Backups of the group this node knows of (a primary: those replying to it).")
	descArbTerm     = desc("tandem_arbiter_holds_term", "1 while this node holds the group's election in etcd with a fresh lease (arbiter only).")
	descArbTTL      = desc("tandem_arbiter_lease_ttl_left_seconds", "What etcd says is left of this node's lease; -1 without a term (arbiter only).")
	descArbUp       = desc("tandem_arbiter_endpoints_reachable", "etcd endpoints that answered the last status read (arbiter only).")
	descArbSafe     = desc("tandem_arbiter_failsafe", "1 while the primary acts in failsafe: its lease is not fresh and its backups vouch for it (arbiter only).")

	snapshotDescs = []*prometheus.Desc{descInfo, descRole, descEpoch, descFenced, descMaintenance, descBackupConf,
		descHBAge, descSilent, descPrimEpoch, descTakingOver, descChannel, descSent, descReceived, descIgnored,
		descTakeovers, descRewrites, descManaged, descConnected, descTampered, descSigFail, descDropped,
		descPriority, descEffective, descCheckUp, descBackups, descArbTerm, descArbTTL, descArbUp, descArbSafe}
)

// roles are the values of tandem_role's role label, each always exported.
var roles = []string{"primary", "backup", "taking-over", "fenced", "starting"}

func (s snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range snapshotDescs {
		ch <- d
	}
}

func (s snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	st, m := s.c.Status(), s.c.Metrics()
	b01 := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descInfo, 1, st.Version, st.Node, st.FailoverID)
	for _, r := range roles {
		gauge(descRole, b01(st.Role == r), r)
	}
	gauge(descEpoch, float64(st.Epoch))
	gauge(descFenced, b01(st.Role == "fenced"))
	gauge(descMaintenance, b01(st.Maintenance))
	gauge(descBackupConf, b01(st.BackupConfigured))
	age := -1.0
	if p := st.Primary; p != nil {
		if p.LastHeartbeatAgeMS >= 0 {
			age = float64(p.LastHeartbeatAgeMS) / 1000
		}
		gauge(descSilent, float64(p.SilentForMS)/1000)
		gauge(descPrimEpoch, float64(p.Epoch))
	}
	gauge(descHBAge, age)
	gauge(descTakingOver, b01(st.Takeover != nil))
	gauge(descChannel, b01(st.HeartbeatChannel.Connected))
	counter(descSent, m.HeartbeatsSent)
	counter(descReceived, m.HeartbeatsReceived)
	counter(descIgnored, m.HeartbeatsIgnored)
	counter(descTakeovers, m.Takeovers)
	counter(descRewrites, m.AgentRewritesOK, "ok")
	counter(descRewrites, m.AgentRewritesFail, "failed")
	gauge(descManaged, float64(st.Agents.Managed))
	gauge(descConnected, float64(st.Agents.Connected))
	gauge(descTampered, float64(st.Agents.Tampered))
	counter(descSigFail, m.SignatureFailures)
	counter(descDropped, m.MessagesDropped)
	gauge(descPriority, float64(st.Priority))
	gauge(descEffective, float64(st.EffectivePriority))
	for _, c := range st.Checks {
		gauge(descCheckUp, b01(c.Up), c.Name)
	}
	gauge(descBackups, float64(len(st.Backups)))
	if a := st.Arbiter; a != nil {
		gauge(descArbTerm, b01(a.HoldsTerm))
		ttl := -1.0
		if a.LeaseTTLLeftMS >= 0 {
			ttl = float64(a.LeaseTTLLeftMS) / 1000
		}
		gauge(descArbTTL, ttl)
		up := 0
		for _, e := range a.Endpoints {
			if e.Reachable {
				up++
			}
		}
		gauge(descArbUp, float64(up))
		gauge(descArbSafe, b01(a.Failsafe))
	}
}
