package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/admintoken"
	"github.com/tandem-ha/tandem/primary"
)

type fakeCtl struct {
	mu     sync.Mutex
	st     Status
	maint  []bool
	swErr  error
	swCall int
}

func (f *fakeCtl) Status() Status { f.mu.Lock(); defer f.mu.Unlock(); return f.st }
func (f *fakeCtl) Metrics() Metrics {
	return Metrics{HeartbeatsSent: 42, HeartbeatsIgnored: 7, SignatureFailures: 3}
}
func (f *fakeCtl) Switchover(ctx context.Context, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.swCall++
	return f.swErr
}
func (f *fakeCtl) SetMaintenance(on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maint = append(f.maint, on)
	return nil
}
func (f *fakeCtl) Agents() []primary.AgentView { return []primary.AgentView{{ID: "x", Epoch: 2}} }

// calls is what the mutating endpoints asked of the controller.
func (f *fakeCtl) calls() (maint []bool, switchovers int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]bool(nil), f.maint...), f.swCall
}

const (
	testToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testAdmin = "127.0.0.1:61630"
)

// doAuth is do for a mutating request as the CLI sends it: the admin
// address as Host and the token.
func doAuth(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, "http://"+testAdmin+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	h.ServeHTTP(rec, req)
	return rec
}

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
	h := AdminHandler(c, AdminToken(testToken), AdminAddress(testAdmin))
	if rec := doAuth(t, h, "POST", "/maintenance?state=on"); rec.Code != 200 {
		t.Fatal(rec.Code, rec.Body)
	}
	if rec := doAuth(t, h, "POST", "/maintenance?state=maybe"); rec.Code != 400 || !strings.Contains(rec.Body.String(), "expected on or off") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if rec := doAuth(t, h, "GET", "/maintenance"); rec.Code != 405 {
		t.Fatal(rec.Code)
	}
	if len(c.maint) != 1 || !c.maint[0] {
		t.Fatalf("maintenance calls %v", c.maint)
	}
	if rec := doAuth(t, h, "POST", "/switchover"); rec.Code != 202 || c.swCall != 1 {
		t.Fatalf("%d %d", rec.Code, c.swCall)
	}
	c.swErr = errors.New("no backup")
	if rec := doAuth(t, h, "POST", "/switchover"); rec.Code != 409 || !strings.Contains(rec.Body.String(), "no backup") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
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

// serveFake runs the admin API for c on a loopback port, as Run does, and
// returns its address.
func serveFake(t *testing.T, c Controller, lim AdminLimits) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr, done, err := ServeAdmin(ctx, "127.0.0.1:0", AdminHandler(c, AdminToken(testToken), AdminAddress("127.0.0.1:0")), lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); done() })
	return addr
}

var noKeepAlive = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// send does one request; hdr may set "Host".
func send(t *testing.T, addr, method, path string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := noKeepAlive.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const bearer = "Bearer " + testToken

// Attack: a web page's plain form POST to 127.0.0.1:61630/maintenance
// turned failover off. Simple-form requests carry no token and a
// form Content-Type: both are refused and maintenance is unchanged.
func TestAdminFormPostWithoutTokenIsRefused(t *testing.T) {
	c := &fakeCtl{}
	addr := serveFake(t, c, AdminLimits{})
	for _, tc := range []struct {
		name, path string
		hdr        map[string]string
		body       string
		want       int
	}{
		{"form", "/maintenance?state=on", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "state=on", 415},
		{"multipart", "/maintenance?state=on", map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, "--x\r\n\r\non\r\n--x--\r\n", 415},
		{"text/plain", "/maintenance", map[string]string{"Content-Type": "text/plain"}, "on", 415},
		{"form with the token", "/maintenance?state=on", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": bearer}, "state=on", 415},
		{"body without a type", "/maintenance", map[string]string{"Authorization": bearer}, "on", 415},
		{"no token", "/maintenance?state=on", nil, "", 401},
		{"json without token", "/maintenance", map[string]string{"Content-Type": "application/json"}, `{"state":"on"}`, 401},
		{"wrong token", "/maintenance?state=on", map[string]string{"Authorization": "Bearer " + strings.Repeat("0", 64)}, "", 401},
		{"basic auth", "/maintenance?state=on", map[string]string{"Authorization": "Basic " + testToken}, "", 401},
		{"switchover form", "/switchover", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "a=b", 415},
		{"switchover no token", "/switchover", nil, "", 401},
	} {
		if code, body := send(t, addr, "POST", tc.path, tc.hdr, tc.body); code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
	}
	if m, sw := c.calls(); len(m) != 0 || sw != 0 {
		t.Fatalf("refused requests changed something: maintenance %v, switchovers %d", m, sw)
	}
	// The GET endpoints stay open.
	for _, p := range []string{"/status", "/agents", "/metrics"} {
		if code, _ := send(t, addr, "GET", p, nil, ""); code != 200 {
			t.Errorf("GET %s: %d", p, code)
		}
	}
}

// Attack: /switchover answered 202 to a request with a spoofed Host (DNS
// rebinding: the page's origin resolves to 127.0.0.1). The Host must name
// the admin address.
func TestAdminSpoofedHostIsRefused(t *testing.T) {
	c := &fakeCtl{}
	addr := serveFake(t, c, AdminLimits{})
	_, port, _ := net.SplitHostPort(addr)
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port, "127.0.0.1:1" + port, "localhost:80"} {
		for _, path := range []string{"/switchover", "/maintenance?state=on"} {
			code, body := send(t, addr, "POST", path, map[string]string{"Host": host, "Authorization": bearer}, "")
			if code != http.StatusMisdirectedRequest && code != http.StatusForbidden && code != http.StatusBadRequest {
				t.Errorf("Host %q %s: %d %s, want 421", host, path, code, body)
			}
		}
	}
	// HTTP/1.0 with no Host at all.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /switchover HTTP/1.0\r\nAuthorization: %s\r\n\r\n", bearer)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(conn); !strings.HasPrefix(string(b), "HTTP/1.0 421") {
		t.Errorf("no Host: %q", b)
	}
	if m, sw := c.calls(); len(m) != 0 || sw != 0 {
		t.Fatalf("spoofed Host changed something: maintenance %v, switchovers %d", m, sw)
	}
}

// A request with the right token from a foreign origin (a page that got
// the token somehow, or a rebinding page) is refused.
func TestAdminCrossOriginWithTheTokenIsRefused(t *testing.T) {
	c := &fakeCtl{}
	addr := serveFake(t, c, AdminLimits{})
	_, port, _ := net.SplitHostPort(addr)
	for _, hdr := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Origin": "null"},
		{"Origin": "https://127.0.0.1:" + port},
		{"Origin": "http://127.0.0.1:1" + port},
		{"Origin": "http://evil.example:" + port},
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site"},
	} {
		hdr["Authorization"] = bearer
		hdr["Content-Type"] = "application/json"
		if code, body := send(t, addr, "POST", "/maintenance", hdr, `{"state":"on"}`); code != 403 {
			t.Errorf("%v: %d %s, want 403", hdr, code, body)
		}
		if code, body := send(t, addr, "POST", "/switchover", hdr, ""); code != 403 {
			t.Errorf("switchover %v: %d %s, want 403", hdr, code, body)
		}
	}
	if m, sw := c.calls(); len(m) != 0 || sw != 0 {
		t.Fatalf("cross-origin requests changed something: maintenance %v, switchovers %d", m, sw)
	}
	// The admin address itself as Origin is not cross-origin.
	if code, body := send(t, addr, "POST", "/maintenance?state=on", map[string]string{"Authorization": bearer, "Origin": "http://" + addr}, ""); code != 200 {
		t.Fatalf("same origin: %d %s", code, body)
	}
}

// With the token, as the CLI and the runbook's curl send it, both work.
func TestAdminPostWithTheTokenWorks(t *testing.T) {
	c := &fakeCtl{}
	addr := serveFake(t, c, AdminLimits{})
	_, port, _ := net.SplitHostPort(addr)
	if code, body := send(t, addr, "POST", "/maintenance?state=on", map[string]string{"Authorization": bearer}, ""); code != 200 {
		t.Fatalf("maintenance on: %d %s", code, body)
	}
	if code, body := send(t, addr, "POST", "/maintenance", map[string]string{"Authorization": "bearer " + testToken, "Content-Type": "application/json; charset=utf-8", "Host": "localhost:" + port}, `{"state":"off"}`); code != 200 {
		t.Fatalf("maintenance off (JSON body, Host localhost): %d %s", code, body)
	}
	if code, body := send(t, addr, "POST", "/maintenance", map[string]string{"Authorization": bearer, "Content-Type": "application/json"}, `{"maintenance":true}`); code != 200 {
		t.Fatalf("maintenance {maintenance:true}: %d %s", code, body)
	}
	if code, body := send(t, addr, "POST", "/switchover", map[string]string{"Authorization": bearer, "Sec-Fetch-Site": "none"}, ""); code != 202 {
		t.Fatalf("switchover: %d %s", code, body)
	}
	if m, sw := c.calls(); len(m) != 3 || !m[0] || m[1] || !m[2] || sw != 1 {
		t.Fatalf("maintenance %v, switchovers %d", m, sw)
	}
	// A body over 4 KiB is refused.
	big := `{"state":"on","pad":"` + strings.Repeat("x", 8<<10) + `"}`
	if code, _ := send(t, addr, "POST", "/maintenance", map[string]string{"Authorization": bearer, "Content-Type": "application/json"}, big); code != 413 {
		t.Fatalf("big body: %d, want 413", code)
	}
	// No token configured: mutating requests are disabled.
	h := AdminHandler(c)
	if rec := doAuth(t, h, "POST", "/maintenance?state=on"); rec.Code != 403 {
		t.Fatalf("no token configured: %d", rec.Code)
	}
}

// A slowloris connection (headers never finished) is closed after the
// read-header timeout.
func TestAdminSlowHeadersAreCutOff(t *testing.T) {
	c := &fakeCtl{}
	addr := serveFake(t, c, AdminLimits{ReadHeaderTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /maintenance?state=on HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nX-Slow: a", addr, bearer)
	start := time.Now()
	conn.SetReadDeadline(start.Add(5 * time.Second))
	_, err = io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection was still open after %v", time.Since(start))
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v, want about 200ms", d)
	}
	if m, _ := c.calls(); len(m) != 0 {
		t.Fatal("the unfinished request changed maintenance")
	}
}

// Connections past the cap wait until one of the first ones closes.
func TestAdminConnectionCap(t *testing.T) {
	addr := serveFake(t, &fakeCtl{}, AdminLimits{MaxConns: 2, ReadHeaderTimeout: 30 * time.Second, ReadTimeout: 30 * time.Second})
	var held []net.Conn
	for i := 0; i < 2; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /status HTTP/1.1\r\nHost: %s\r\n", addr) // never finished
		held = append(held, conn)
	}
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	fmt.Fprintf(third, "GET /status HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	third.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := third.Read(buf); err == nil || n > 0 {
		t.Fatalf("a third connection was served while two were held: %q %v", buf[:n], err)
	}
	held[0].Close()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(third)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		t.Fatalf("after one held connection closed: %q %v", b, err)
	}
}

// The node creates DATA/admin.token (0600) on its first start, keeps it
// across restarts, and its admin API takes it; a request without it
// changes nothing.
func TestNodeAdminTokenWiring(t *testing.T) {
	data := t.TempDir()
	var tok string
	for run := 0; run < 2; run++ {
		c := makeCluster(t, clusterOptions{nodes: 1, configure: func(i int, cfg *config.Config) { cfg.DataDir = data }})
		cn := c.start(0)
		c.waitRole(0, RolePrimary)
		p := admintoken.Path(data)
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("run %d: %s: %v %v, want mode 0600", run, p, fi, err)
		}
		got, err := admintoken.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		if run == 1 && got != tok {
			t.Fatal("the admin token changed across a restart")
		}
		tok = got
		before := cn.n.Status().Maintenance // run 0: off; run 1: on (it survives restarts)
		want, state := !before, map[bool]string{true: "on", false: "off"}[!before]
		if code, body := send(t, cn.n.AdminAddr, "POST", "/maintenance?state="+state, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "state="+state); code < 400 || cn.n.Status().Maintenance != before {
			t.Fatalf("form POST: %d %s, maintenance %v", code, body, cn.n.Status().Maintenance)
		}
		if code, body := send(t, cn.n.AdminAddr, "POST", "/maintenance?state="+state, map[string]string{"Authorization": "Bearer " + tok}, ""); code != 200 || cn.n.Status().Maintenance != want {
			t.Fatalf("POST with the token: %d %s, maintenance %v", code, body, cn.n.Status().Maintenance)
		}
		c.stop(0)
	}
}

// Garbage in DATA/admin.token stops the server with a bad-input error
// naming the file; the file is left as it was.
func TestNodeRefusesAGarbageAdminToken(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 1})
	p := admintoken.Path(c.nodes[0].dir)
	if err := os.WriteFile(p, []byte("not a token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.nodes[0].n.Run(ctx)
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), p) {
		t.Fatalf("Run: %v; want ErrBadInput naming %s", err, p)
	}
	if b, _ := os.ReadFile(p); string(b) != "not a token\n" {
		t.Fatal("the garbage token file was replaced")
	}
}
