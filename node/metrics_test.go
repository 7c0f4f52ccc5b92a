package node

import (
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tandem-ha/tandem/arbiter"
	"github.com/tandem-ha/tandem/failoverid"
)

// metricsCtl is fakeCtl with counters of its own and a Telemetry.
type metricsCtl struct {
	*fakeCtl
	m   Metrics
	tel *Telemetry
}

func (c *metricsCtl) Metrics() Metrics      { return c.m }
func (c *metricsCtl) telemetry() *Telemetry { return c.tel }

// parseMetrics GETs /metrics from c's admin handler and parses the body.
func parseMetrics(t *testing.T, c Controller) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	rec := do(t, AdminHandler(c), "GET", "/metrics")
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q", ct)
	}
	body := rec.Body.String()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v\n%s", err, body)
	}
	return fams, body
}

// value is the value of the one sample of family name whose labels include
// want (name=value pairs); it fails the test when there is not exactly one.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no series %s", name)
	}
	var found []float64
	for _, m := range f.Metric {
		if !hasLabels(m, want...) {
			continue
		}
		switch {
		case m.Gauge != nil:
			found = append(found, m.Gauge.GetValue())
		case m.Counter != nil:
			found = append(found, m.Counter.GetValue())
		case m.Untyped != nil:
			found = append(found, m.Untyped.GetValue())
		case m.Histogram != nil:
			found = append(found, float64(m.Histogram.GetSampleCount()))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d samples, want 1", name, want, len(found))
	}
	return found[0]
}

func hasLabels(m *dto.Metric, kv ...string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		ok := false
		for _, l := range m.Label {
			ok = ok || (l.GetName() == kv[i] && l.GetValue() == kv[i+1])
		}
		if !ok {
			return false
		}
	}
	return true
}

func TestMetricsEndpointParsesAndHasTheSeries(t *testing.T) {
	c := &metricsCtl{
		fakeCtl: &fakeCtl{st: Status{Node: "opsc-b", Role: "backup", FailoverID: "fid-b", Epoch: 7, Version: "v9.9.9",
			Maintenance: true, Primary: &PrimaryStatus{Node: "opsc-a", Epoch: 6, LastHeartbeatAgeMS: 1500, SilentForMS: 2250},
			HeartbeatChannel: ChannelInfo{Connected: true},
			Agents:           AgentsStatus{Managed: 5, Connected: 0, Tampered: 1}}},
		m: Metrics{HeartbeatsReceived: 120, HeartbeatsIgnored: 4, Takeovers: 2, AgentRewritesOK: 9, AgentRewritesFail: 1,
			SignatureFailures: 3, MessagesDropped: 11},
		tel: NewTelemetry(100*time.Millisecond, 500*time.Millisecond),
	}
	fams, body := parseMetrics(t, c)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
		typ    dto.MetricType
	}{
		{"tandem_info", []string{"version", "v9.9.9", "node", "opsc-b", "failover_id", "fid-b"}, 1, dto.MetricType_GAUGE},
		{"tandem_role", []string{"role", "backup"}, 1, dto.MetricType_GAUGE},
		{"tandem_role", []string{"role", "primary"}, 0, dto.MetricType_GAUGE},
		{"tandem_role", []string{"role", "taking-over"}, 0, dto.MetricType_GAUGE},
		{"tandem_role", []string{"role", "fenced"}, 0, dto.MetricType_GAUGE},
		{"tandem_role", []string{"role", "starting"}, 0, dto.MetricType_GAUGE},
		{"tandem_epoch", nil, 7, dto.MetricType_GAUGE},
		{"tandem_fenced", nil, 0, dto.MetricType_GAUGE},
		{"tandem_maintenance", nil, 1, dto.MetricType_GAUGE},
		{"tandem_backup_configured", nil, 0, dto.MetricType_GAUGE},
		{"tandem_last_heartbeat_age_seconds", nil, 1.5, dto.MetricType_GAUGE},
		{"tandem_primary_silent_seconds", nil, 2.25, dto.MetricType_GAUGE},
		{"tandem_primary_epoch", nil, 6, dto.MetricType_GAUGE},
		{"tandem_takeover_in_progress", nil, 0, dto.MetricType_GAUGE},
		{"tandem_heartbeat_channel_connected", nil, 1, dto.MetricType_GAUGE},
		{"tandem_heartbeats_sent_total", nil, 0, dto.MetricType_COUNTER},
		{"tandem_heartbeats_received_total", nil, 120, dto.MetricType_COUNTER},
		{"tandem_heartbeats_ignored_total", nil, 4, dto.MetricType_COUNTER},
		{"tandem_takeovers_total", nil, 2, dto.MetricType_COUNTER},
		{"tandem_agent_rewrites_total", []string{"result", "ok"}, 9, dto.MetricType_COUNTER},
		{"tandem_agent_rewrites_total", []string{"result", "failed"}, 1, dto.MetricType_COUNTER},
		{"tandem_agents_managed", nil, 5, dto.MetricType_GAUGE},
		{"tandem_agents_connected", nil, 0, dto.MetricType_GAUGE},
		{"tandem_agents_tampered", nil, 1, dto.MetricType_GAUGE},
		{"tandem_signature_failures_total", nil, 3, dto.MetricType_COUNTER},
		{"tandem_messages_dropped_total", nil, 11, dto.MetricType_COUNTER},
		{"tandem_heartbeat_period_seconds", nil, 0.1, dto.MetricType_GAUGE},
		{"tandem_fail_window_seconds", nil, 0.5, dto.MetricType_GAUGE},
		{"tandem_last_takeover_duration_seconds", nil, -1, dto.MetricType_GAUGE},
		{"tandem_takeover_duration_seconds", nil, 0, dto.MetricType_HISTOGRAM},
		{"tandem_takeover_phase_duration_seconds", []string{"phase", PhaseFilesRewritten}, 0, dto.MetricType_HISTOGRAM},
	} {
		if got := value(t, fams, tc.name, tc.labels...); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
		if got := fams[tc.name].GetType(); got != tc.typ {
			t.Errorf("%s is a %v, want %v", tc.name, got, tc.typ)
		}
	}
	if n := len(fams["tandem_takeover_phase_duration_seconds"].Metric); n != len(TakeoverPhases) {
		t.Errorf("%d phases exported, want %d", n, len(TakeoverPhases))
	}
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds", "go_goroutines", "go_gc_duration_seconds", "go_memstats_alloc_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s (process and Go collectors)", name)
		}
	}
	// The integration tests read "NAME VALUE" lines.
	for _, line := range []string{"tandem_signature_failures_total 3", "tandem_messages_dropped_total 11", "tandem_epoch 7"} {
		if !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("body lacks the line %q", line)
		}
	}
}

// The hand-written exporter's checks, kept: the fake controller's counters
// and a fenced node.
func TestMetricsOfAFencedNode(t *testing.T) {
	c := &fakeCtl{st: Status{Role: "fenced", Epoch: 3, Primary: &PrimaryStatus{LastHeartbeatAgeMS: 1500}}}
	fams, _ := parseMetrics(t, c)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tandem_role", []string{"role", "fenced"}, 1}, {"tandem_role", []string{"role", "primary"}, 0},
		{"tandem_epoch", nil, 3}, {"tandem_fenced", nil, 1}, {"tandem_heartbeats_sent_total", nil, 42},
		{"tandem_heartbeats_ignored_total", nil, 7}, {"tandem_signature_failures_total", nil, 3},
		{"tandem_last_heartbeat_age_seconds", nil, 1.5},
	} {
		if got := value(t, fams, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// No telemetry of its own: the takeover series are there, empty, and
	// the unknown timings are absent.
	if v := value(t, fams, "tandem_takeover_duration_seconds"); v != 0 {
		t.Errorf("takeovers observed: %v", v)
	}
	if _, ok := fams["tandem_fail_window_seconds"]; ok {
		t.Error("tandem_fail_window_seconds without a configured window")
	}
}

func TestHeartbeatAgeIsMinusOneWhenNeverHeardOrOnAPrimary(t *testing.T) {
	for _, st := range []Status{
		{Role: "backup", Primary: &PrimaryStatus{LastHeartbeatAgeMS: -1}},
		{Role: "primary", BackupConfigured: true},
	} {
		fams, _ := parseMetrics(t, &fakeCtl{st: st})
		if v := value(t, fams, "tandem_last_heartbeat_age_seconds"); v != -1 {
			t.Errorf("%s: age %v, want -1", st.Role, v)
		}
		if st.Role == "primary" {
			if v := value(t, fams, "tandem_backup_configured"); v != 1 {
				t.Errorf("backup_configured %v", v)
			}
			if _, ok := fams["tandem_primary_silent_seconds"]; ok {
				t.Error("a primary exports tandem_primary_silent_seconds")
			}
		}
	}
}

func TestTakeoverTimings(t *testing.T) {
	tel := NewTelemetry(time.Second, 5*time.Second)
	c := &metricsCtl{fakeCtl: &fakeCtl{st: Status{Role: "primary"}}, tel: tel}
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	// A step without a decision (a takeover resumed after a restart) is
	// not timed.
	tel.TakeoverStep(failoverid.StepAgentsRewritten, at(0))
	tel.TakeoverBegan(at(0))
	tel.TakeoverStep(failoverid.StepEpochPersisted, at(10))
	tel.TakeoverStep(failoverid.StepBeforeHook, at(1010))
	tel.TakeoverStep(failoverid.StepAgentsRewritten, at(1260))
	tel.TakeoverStep(failoverid.StepLocationDormant, at(1265))
	tel.TakeoverStep("no-such-step", at(1300))
	tel.TakeoverStep(failoverid.StepPrimaryHeartbeat, at(1365))
	// After the first heartbeat the timing has ended.
	tel.TakeoverStep(failoverid.StepPrimaryHeartbeat, at(9000))
	// The direct hooks.
	tel.ObserveTakeoverPhase(PhaseBeforeHook, 2*time.Second)
	tel.ObserveTakeoverPhase("bogus", time.Second)

	fams, _ := parseMetrics(t, c)
	sums := map[string]float64{}
	counts := map[string]uint64{}
	for _, m := range fams["tandem_takeover_phase_duration_seconds"].Metric {
		for _, l := range m.Label {
			if l.GetName() == "phase" {
				sums[l.GetValue()] = m.Histogram.GetSampleSum()
				counts[l.GetValue()] = m.Histogram.GetSampleCount()
			}
		}
	}
	want := map[string]float64{PhaseEpochPersisted: .01, PhaseBeforeHook: 3, PhaseFilesRewritten: .25, PhaseLocationDormant: .005, PhaseFirstHeartbeat: .1}
	wantN := map[string]uint64{PhaseEpochPersisted: 1, PhaseBeforeHook: 2, PhaseFilesRewritten: 1, PhaseLocationDormant: 1, PhaseFirstHeartbeat: 1}
	if len(sums) != len(want) {
		t.Errorf("phases %v", sums)
	}
	for p, w := range want {
		if math.Abs(sums[p]-w) > 1e-9 || counts[p] != wantN[p] {
			t.Errorf("phase %s: sum %v count %d, want %v and %d", p, sums[p], counts[p], w, wantN[p])
		}
	}
	h := fams["tandem_takeover_duration_seconds"].Metric[0].Histogram
	if h.GetSampleCount() != 1 || math.Abs(h.GetSampleSum()-1.365) > 1e-9 {
		t.Errorf("takeover: count %d sum %v, want 1 and 1.365", h.GetSampleCount(), h.GetSampleSum())
	}
	if v := value(t, fams, "tandem_last_takeover_duration_seconds"); math.Abs(v-1.365) > 1e-9 {
		t.Errorf("last takeover %v", v)
	}
	// 1.365 s falls in the 2.5 s bucket, not the 1 s one.
	for _, b := range h.Bucket {
		if b.GetUpperBound() == 1 && b.GetCumulativeCount() != 0 || b.GetUpperBound() == 2.5 && b.GetCumulativeCount() != 1 {
			t.Errorf("bucket le=%v: %d", b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
}

// Two nodes in one process: each has its own registry and telemetry.
func TestRegistriesArePerNode(t *testing.T) {
	a, b := &Node{tel: NewTelemetry(time.Second, 5*time.Second)}, &Node{tel: NewTelemetry(time.Second, 5*time.Second)}
	if a.telemetry() == b.telemetry() || a.telemetry() != a.telemetry() {
		t.Fatal("telemetry is not per node")
	}
	a.telemetry().ObserveTakeoverPhase(PhaseFilesRewritten, time.Second)
	a.telemetry().ObserveTakeover(3 * time.Second)
	ca := &metricsCtl{fakeCtl: &fakeCtl{st: Status{Node: "a", Role: "primary"}}, tel: a.telemetry()}
	cb := &metricsCtl{fakeCtl: &fakeCtl{st: Status{Node: "b", Role: "backup"}}, tel: b.telemetry()}
	ha, hb := AdminHandler(ca), AdminHandler(cb) // registering twice in one process must not panic
	_, _ = ha, hb
	fa, _ := parseMetrics(t, ca)
	fb, _ := parseMetrics(t, cb)
	if value(t, fa, "tandem_takeover_duration_seconds") != 1 || value(t, fb, "tandem_takeover_duration_seconds") != 0 {
		t.Error("takeovers leaked between nodes")
	}
	if value(t, fa, "tandem_info", "node", "a") != 1 || value(t, fb, "tandem_info", "node", "b") != 1 {
		t.Error("tandem_info")
	}
	if value(t, fa, "tandem_role", "role", "primary") != 1 || value(t, fb, "tandem_role", "role", "primary") != 0 {
		t.Error("roles leaked between nodes")
	}
}

func TestArbiterMetrics(t *testing.T) {
	// Without an arbiter, none of its series.
	fams, _ := parseMetrics(t, &metricsCtl{fakeCtl: &fakeCtl{st: Status{Role: "primary"}}, tel: NewTelemetry(time.Second, 5*time.Second)})
	for name := range fams {
		if strings.HasPrefix(name, "tandem_arbiter_") {
			t.Errorf("%s exported without an arbiter", name)
		}
	}
	tel := NewTelemetry(time.Second, 5*time.Second)
	tel.EnableArbiter()
	tel.ArbiterRenew(3*time.Millisecond, true)
	tel.ArbiterRenew(2*time.Second, false)
	st := Status{Role: "primary", Arbiter: &ArbiterStatus{HoldsTerm: true, LeaseTTLLeftMS: 8000, Failsafe: false,
		Endpoints: []arbiter.EndpointStatus{{Reachable: true}, {Reachable: true}, {}}}}
	fams, _ = parseMetrics(t, &metricsCtl{fakeCtl: &fakeCtl{st: st}, tel: tel})
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"tandem_arbiter_holds_term", 1}, {"tandem_arbiter_lease_ttl_left_seconds", 8}, {"tandem_arbiter_endpoints_reachable", 2},
		{"tandem_arbiter_failsafe", 0}, {"tandem_arbiter_renew_failures_total", 1}, {"tandem_arbiter_renew_duration_seconds", 2},
	} {
		if got := value(t, fams, tc.name); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
}
