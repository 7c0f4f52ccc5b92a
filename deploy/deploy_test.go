// Package deploy holds tandem's deployment files; its tests check the
// Grafana dashboard and the Prometheus rules against the series a node
// really exports.
package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/tandem-ha/tandem/node"
	"github.com/tandem-ha/tandem/primary"
)

// ctl is a node.Controller with every conditional series present (a
// backup watching a primary).
type ctl struct{}

func (ctl) Status() node.Status {
	return node.Status{Node: "b", Role: "backup", FailoverID: "id", Epoch: 2, Version: "test",
		Primary: &node.PrimaryStatus{Node: "a", Epoch: 1, LastHeartbeatAgeMS: 10},
		Arbiter: &node.ArbiterStatus{Holder: "a", LeaseTTLLeftMS: -1}} // a server with an arbiter exports its series
}
func (ctl) Metrics() node.Metrics                          { return node.Metrics{} }
func (ctl) Switchover(ctx context.Context, _ string) error { return nil }
func (ctl) SetMaintenance(on bool) error                   { return nil }
func (ctl) Agents() []primary.AgentView                    { return nil }

// exported is every series name a node's registry exports, with the
// _bucket/_sum/_count series of its histograms and summaries.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	tel := node.NewTelemetry(10*time.Second, time.Minute)
	tel.EnableArbiter()
	fams, err := node.NewRegistry(ctl{}, tel).Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	for _, want := range []string{"tandem_info", "tandem_role", "tandem_takeover_duration_seconds_bucket", "process_cpu_seconds_total", "go_goroutines"} {
		if !names[want] {
			t.Fatalf("the registry lacks %s", want)
		}
	}
	return names
}

var (
	reString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	reBraces   = regexp.MustCompile(`\{[^{}]*\}`)
	reBrackets = regexp.MustCompile(`\[[^\[\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	reVar      = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	reToken    = regexp.MustCompile(`[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true,
		"without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true}
)

// seriesIn returns the metric names a PromQL expression selects: what is
// left once strings, label matchers, ranges, grouping label lists, Grafana
// variables, numbers, keywords and function calls are taken out.
func seriesIn(expr string) []string {
	s := reString.ReplaceAllString(expr, `""`)
	s = reVar.ReplaceAllString(s, "1")
	s = reBraces.ReplaceAllString(s, " ")
	s = reBrackets.ReplaceAllString(s, " ")
	s = reGrouping.ReplaceAllString(s, " ")
	var out []string
	for _, m := range reToken.FindAllStringSubmatch(s, -1) {
		tok := m[0]
		if m[1] != "" || tok[0] >= '0' && tok[0] <= '9' || keywords[strings.ToLower(tok)] {
			continue // a function or aggregation, a number or duration, a keyword
		}
		out = append(out, tok)
	}
	return out
}

func TestSeriesIn(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (cluster) (tandem_role{role="primary", x=~"$i"}) == 0 or absent(tandem_role{role="primary"})`: "tandem_role tandem_role",
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"${x}"}[$__rate_interval])))`:          "a_bucket",
		`a > 0.5 * b and ignoring (role) c{role="x"} == 1 unless d offset 5m`:                                 "a b c d",
		`increase(x_total[1h]) > 1e3 and on() vector(1)`:                                                      "x_total",
		`sum(rate(foo[5m])) by (job) / count without (instance) (bar:rec)`:                                    "foo bar:rec",
	} {
		if got := strings.Join(seriesIn(expr), " "); got != want {
			t.Errorf("seriesIn(%s) = %q, want %q", expr, got, want)
		}
	}
}

// check fails the test for every series expr names that tandem does not
// export; it returns how many series it checked.
func check(t *testing.T, names map[string]bool, where, expr string) int {
	t.Helper()
	found := seriesIn(expr)
	for _, s := range found {
		if !names[s] {
			t.Errorf("%s: %q names %s, which tandem does not export", where, expr, s)
		}
	}
	return len(found)
}

// dashboardExprs walks the dashboard JSON and returns every "expr" and
// every templating query, with where each is.
func dashboardExprs(t *testing.T, path string) (map[string]any, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	exprs := map[string]string{}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where += "/" + title
			}
			for k, x := range v {
				if s, ok := x.(string); ok && k == "expr" {
					exprs[where+"#"+k+":"+s] = s
				}
				walk(where, x)
			}
		case []any:
			for _, x := range v {
				walk(where, x)
			}
		}
	}
	walk("", d["panels"])
	walk("annotations", d["annotations"])
	return d, exprs
}

var reLabelValues = regexp.MustCompile(`^label_values\(\s*([^,]+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)$`)

func TestDashboardNamesOnlyExportedSeries(t *testing.T) {
	names := exported(t)
	d, exprs := dashboardExprs(t, filepath.Join("grafana", "tandem.json"))
	if d["uid"] == "" || d["title"] == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	if len(exprs) < 20 {
		t.Errorf("only %d expressions found in the dashboard", len(exprs))
	}
	n := 0
	for where, e := range exprs {
		if strings.TrimSpace(e) == "" {
			t.Errorf("%s: empty expression", where)
		}
		n += check(t, names, where, e)
	}
	// Template variables: label_values(SELECTOR, LABEL).
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, v := range vars {
		v := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		q, _ := v["definition"].(string)
		m := reLabelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %v: query %q is not label_values(SELECTOR, LABEL)", v["name"], q)
			continue
		}
		n += check(t, names, "variable "+v["name"].(string), m[1])
	}
	// Panel ids are unique; every panel with queries uses the data source variable.
	ids := map[float64]bool{}
	for _, p := range d["panels"].([]any) {
		p := p.(map[string]any)
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("panel id %v used twice", id)
		}
		ids[id] = true
		if p["type"] != "row" {
			if ds, _ := p["datasource"].(map[string]any); ds["uid"] != "${datasource}" {
				t.Errorf("panel %v: datasource %v, want the ${datasource} variable", p["title"], p["datasource"])
			}
		}
	}
	t.Logf("%d expressions, %d series references checked", len(exprs), n)
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string            `yaml:"alert"`
			Record string            `yaml:"record"`
			Expr   string            `yaml:"expr"`
			For    string            `yaml:"for"`
			Labels map[string]string `yaml:"labels"`
			Annot  map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

const rulesPath = "prometheus/tandem-rules.yml"

func TestRulesNameOnlyExportedSeries(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			if r.Alert != "" {
				if r.Labels["severity"] == "" || r.Annot["summary"] == "" || r.Annot["description"] == "" {
					t.Errorf("alert %s needs a severity label, a summary and a description", r.Alert)
				}
			}
			if check(t, names, "rule "+r.Alert+r.Record, r.Expr) == 0 {
				t.Errorf("rule %s%s names no series", r.Alert, r.Record)
			}
		}
	}
	// The alerts: no primary, two primaries, backup not replying,
	// takeover slower than the window, signature failures, fenced node.
	var missing []string
	for _, a := range []string{"TandemNoPrimary", "TandemTwoPrimaries", "TandemBackupNotReplying",
		"TandemTakeoverSlowerThanWindow", "TandemSignatureFailures", "TandemFenced"} {
		if !alerts[a] {
			missing = append(missing, a)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%s lacks the alerts %v", rulesPath, missing)
	}
}

// promtool checks the rules and runs their unit tests; it is required in
// CI (Debian's prometheus package ships /usr/bin/promtool).
func TestPromtool(t *testing.T) {
	tool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found (apt-get install prometheus): required in CI")
		}
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "tandem-rules.yml"},
		{"test", "rules", "tandem-rules_test.yml"},
	} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
