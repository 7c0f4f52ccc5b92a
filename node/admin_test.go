package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/primary"
)

type fakeCtl struct {
	st     Status
	maint  []bool
	swErr  error
	swCall int
}

func (f *fakeCtl) Status() Status { return f.st }
func (f *fakeCtl) Metrics() Metrics {
	return Metrics{HeartbeatsSent: 42, HeartbeatsIgnored: 7, SignatureFailures: 3}
}
func (f *fakeCtl) Switchover(ctx context.Context) error {
	f.swCall++
	return f.swErr
}
func (f *fakeCtl) SetMaintenance(on bool) error { f.maint = append(f.maint, on); return nil }
func (f *fakeCtl) Agents() []primary.AgentView  { return []primary.AgentView{{ID: "x", Epoch: 2}} }

func do(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

func TestStatusJSONHasTheContractKeys(t *testing.T) {
	c := &fakeCtl{st: Status{Node: "b", Role: "backup", FailoverID: "id", Epoch: 4, Warnings: []string{},
		Primary: &PrimaryStatus{Node: "a", LastHeartbeatAgeMS: 12}}}
	rec := do(t, AdminHandler(c), "GET", "/status")
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v", rec.Code, err)
	}
	for _, k := range []string{"node", "role", "failover_id", "epoch", "maintenance", "primary", "backup_configured", "agents"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status JSON lacks %q", k)
		}
	}
	agents := m["agents"].(map[string]any)
	for _, k := range []string{"managed", "rewritten", "failed", "connected"} {
		if _, ok := agents[k]; !ok {
			t.Errorf("agents lacks %q", k)
		}
	}
	if m["primary"].(map[string]any)["last_heartbeat_age_ms"].(float64) != 12 {
		t.Error("primary.last_heartbeat_age_ms")
	}
}

func TestHealthzPrimary(t *testing.T) {
	for _, tc := range []struct {
		st   Status
		want int
	}{
		{Status{Role: "primary"}, 200},
		{Status{Role: "backup"}, 503},
		{Status{Role: "taking-over"}, 503},
		{Status{Role: "fenced", FencedBy: &PeerStatus{Epoch: 9}}, 503},
	} {
		if rec := do(t, AdminHandler(&fakeCtl{st: tc.st}), "GET", "/healthz/primary"); rec.Code != tc.want {
			t.Errorf("role %s: %d, want %d", tc.st.Role, rec.Code, tc.want)
		}
	}
}

func TestMaintenanceAndSwitchoverEndpoints(t *testing.T) {
	c := &fakeCtl{}
	h := AdminHandler(c)
	if rec := do(t, h, "POST", "/maintenance?state=on"); rec.Code != 200 {
		t.Fatal(rec.Code)
	}
	if rec := do(t, h, "POST", "/maintenance?state=maybe"); rec.Code != 400 || !strings.Contains(rec.Body.String(), "expected on or off") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if rec := do(t, h, "GET", "/maintenance"); rec.Code != 405 {
		t.Fatal(rec.Code)
	}
	if len(c.maint) != 1 || !c.maint[0] {
		t.Fatalf("maintenance calls %v", c.maint)
	}
	if rec := do(t, h, "POST", "/switchover"); rec.Code != 202 || c.swCall != 1 {
		t.Fatalf("%d %d", rec.Code, c.swCall)
	}
	c.swErr = errors.New("no backup")
	if rec := do(t, h, "POST", "/switchover"); rec.Code != 409 || !strings.Contains(rec.Body.String(), "no backup") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

func TestMetricsAreWellFormedPrometheusText(t *testing.T) {
	c := &fakeCtl{st: Status{Role: "fenced", Epoch: 3, Primary: &PrimaryStatus{LastHeartbeatAgeMS: 1500}}}
	body := do(t, AdminHandler(c), "GET", "/metrics").Body.String()
	for _, want := range []string{
		`tandem_role{role="fenced"} 1`, `tandem_role{role="primary"} 0`, "tandem_epoch 3", "tandem_fenced 1",
		"tandem_heartbeats_sent_total 42", "tandem_heartbeats_ignored_total 7", "tandem_signature_failures_total 3", "tandem_last_heartbeat_age_seconds 1.5",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Every sample line names a metric that has a TYPE line.
	typed := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[1] == "TYPE" {
			typed[f[2]] = true
		}
	}
	for _, l := range strings.Split(body, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name := strings.FieldsFunc(l, func(r rune) bool { return r == '{' || r == ' ' })[0]
		if !typed[name] {
			t.Errorf("sample without TYPE: %q", l)
		}
	}
}

func TestEffectiveAdvertiseAndLoopback(t *testing.T) {
	if got := effectiveAdvertise("10.0.0.1:0", "127.0.0.1:4321"); got != "10.0.0.1:4321" {
		t.Error(got)
	}
	if got := effectiveAdvertise("10.0.0.1:61620", "127.0.0.1:4321"); got != "10.0.0.1:61620" {
		t.Error(got)
	}
	if got := loopback("0.0.0.0:5"); got != "127.0.0.1:5" {
		t.Error(got)
	}
	if got := loopback("[::]:5"); got != "[::1]:5" {
		t.Error(got)
	}
}
