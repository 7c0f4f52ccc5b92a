package demo

import (
	"bufio"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tandem-ha/tandem/config"
)

// compose is the part of a docker-compose file the test reads.
type compose struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image     string         `yaml:"image"`
	Build     *build         `yaml:"build"`
	Command   []string       `yaml:"command"`
	Volumes   []string       `yaml:"volumes"`
	Ports     []string       `yaml:"ports"`
	Expose    []string       `yaml:"expose"`
	Restart   string         `yaml:"restart"`
	User      string         `yaml:"user"`
	DependsOn map[string]any `yaml:"depends_on"`
}

type build struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type mount struct{ source, target string }

func (s service) mounts() []mount {
	var out []mount
	for _, v := range s.Volumes {
		f := strings.Split(v, ":")
		if len(f) >= 2 {
			out = append(out, mount{f[0], f[1]})
		}
	}
	return out
}

// target returns where the service mounts source ("" if it does not).
func (s service) target(source string) string {
	for _, m := range s.mounts() {
		if m.source == source {
			return m.target
		}
	}
	return ""
}

// source returns what the service mounts at target ("" if nothing).
func (s service) source(target string) string {
	for _, m := range s.mounts() {
		if m.target == target {
			return m.source
		}
	}
	return ""
}

// flag returns the value after name in the command.
func (s service) flag(name string) string {
	for i, a := range s.Command {
		if a == name && i+1 < len(s.Command) {
			return s.Command[i+1]
		}
	}
	return ""
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

func mustService(t *testing.T, c compose, name string) service {
	t.Helper()
	s, ok := c.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml: service %q missing", name)
	}
	return s
}

// serverConfig loads the tandem.yaml a server service mounts at its --config.
func serverConfig(t *testing.T, s service, name string) *config.Config {
	t.Helper()
	if len(s.Command) == 0 || s.Command[0] != "server" {
		t.Fatalf("%s: command %q does not run `tandem server`", name, s.Command)
	}
	inCtr := s.flag("--config")
	src := s.source(inCtr)
	if inCtr == "" || src == "" {
		t.Fatalf("%s: --config %q is not a mounted file", name, inCtr)
	}
	cfg, err := config.Load(filepath.FromSlash(src))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return cfg
}

func hostPort(t *testing.T, what, hp string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		t.Fatalf("%s %q: %v", what, hp, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s %q: %v", what, hp, err)
	}
	return h, n
}

const agentsVolume = "agents"

var agentServices = []string{"agent-a1", "agent-a2", "agent-a3"}

func TestComposeServices(t *testing.T) {
	c := loadCompose(t)
	for _, name := range append([]string{"activemq", "seed", "tandem-a", "tandem-b"}, agentServices...) {
		mustService(t, c, name)
	}
	if img := c.Services["activemq"].Image; !strings.HasPrefix(img, "apache/activemq-classic:") {
		t.Errorf("activemq: image %q is not the official ActiveMQ Classic image", img)
	}
	for _, v := range []string{agentsVolume, "tandem-a-data", "tandem-b-data"} {
		if _, ok := c.Volumes[v]; !ok {
			t.Errorf("volume %q is not declared", v)
		}
	}
	for _, name := range append([]string{"tandem-a", "tandem-b"}, agentServices...) {
		s := c.Services[name]
		if s.Build == nil || s.Image != "tandem:demo" {
			t.Errorf("%s: want the tandem:demo image built from the Dockerfile, got image %q build %+v", name, s.Image, s.Build)
			continue
		}
		df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
		if _, err := os.Stat(df); err != nil {
			t.Errorf("%s: Dockerfile %s: %v", name, df, err)
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, "go.mod")); err != nil {
			t.Errorf("%s: build context %s is not the module root: %v", name, s.Build.Context, err)
		}
	}
	// A fenced server exits 3 and must not be restarted blindly.
	for _, name := range []string{"tandem-a", "tandem-b"} {
		if r := c.Services[name].Restart; r != "" && r != "no" {
			t.Errorf("%s: restart %q would restart a fenced server (exit 3); leave it unset", name, r)
		}
	}
}

func TestComposeServerConfigs(t *testing.T) {
	c := loadCompose(t)
	amq := mustService(t, c, "activemq")
	amqPort := 0
	for _, e := range amq.Expose {
		amqPort, _ = strconv.Atoi(e)
	}
	xml := amq.source("/opt/apache-activemq/conf/activemq.xml")
	if xml == "" {
		t.Fatal("activemq: no activemq.xml mounted")
	}
	b, err := os.ReadFile(xml)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "stomp://0.0.0.0:"+strconv.Itoa(amqPort)) {
		t.Errorf("%s has no STOMP connector on the exposed port %d", xml, amqPort)
	}

	for _, name := range []string{"tandem-a", "tandem-b"} {
		s := mustService(t, c, name)
		cfg := serverConfig(t, s, name)
		if cfg.Node != name {
			t.Errorf("%s: node %q, want the service name", name, cfg.Node)
		}
		// heartbeat_broker names the activemq service and its STOMP port.
		addr, _, external, err := cfg.HeartbeatBrokerAddr()
		if err != nil || !external {
			t.Fatalf("%s: heartbeat_broker %q: external=%v err=%v", name, cfg.HeartbeatBroker, external, err)
		}
		if h, p := hostPort(t, name+" heartbeat_broker", addr); h != "activemq" || p != amqPort {
			t.Errorf("%s: heartbeat_broker %s, want activemq:%d", name, addr, amqPort)
		}
		if _, ok := s.DependsOn["activemq"]; name == "tandem-a" && !ok {
			t.Errorf("%s: does not depend on activemq", name)
		}
		// The data dir is the server's own named volume.
		if src := s.source(cfg.DataDir); src != name+"-data" {
			t.Errorf("%s: data_dir %s is mounted from %q, want volume %s-data", name, cfg.DataDir, src, name)
		}
		// Agents reach the server at its advertise address: the service
		// name and the embedded broker's port.
		_, lport := hostPort(t, name+" listen", cfg.Listen)
		if h, p := cfg.AdvertiseHostPort(); h != name || p != lport {
			t.Errorf("%s: advertise %s:%d, want %s:%d", name, h, p, name, lport)
		}
		if !contains(s.Expose, strconv.Itoa(lport)) {
			t.Errorf("%s: broker port %d not exposed", name, lport)
		}
		// The admin API is published on the host's loopback only.
		_, aport := hostPort(t, name+" admin", cfg.Admin)
		published := false
		for _, p := range s.Ports {
			if strings.HasPrefix(p, "127.0.0.1:") && strings.HasSuffix(p, ":"+strconv.Itoa(aport)) {
				published = true
			} else {
				t.Errorf("%s: port %q is not published on 127.0.0.1 only", name, p)
			}
		}
		if !published {
			t.Errorf("%s: admin port %d not published on 127.0.0.1", name, aport)
		}
		// Every agent's address.yaml is one of the server's managed files.
		mnt := s.target(agentsVolume)
		if mnt == "" {
			t.Fatalf("%s: does not mount the shared %q volume", name, agentsVolume)
		}
		for _, an := range agentServices {
			p := mustService(t, c, an).flag("--config")
			if !strings.HasPrefix(p, mnt+"/") {
				t.Errorf("%s: agent %s's file %s is not on the shared volume (%s)", name, an, p, mnt)
			}
			if !matchesAny(cfg.Agents, p) {
				t.Errorf("%s: agents globs %q do not match %s", name, cfg.Agents, p)
			}
		}
	}
}

func TestComposeBackupPrimaryLocation(t *testing.T) {
	c := loadCompose(t)
	a := serverConfig(t, mustService(t, c, "tandem-a"), "tandem-a")
	bsvc := mustService(t, c, "tandem-b")
	b := serverConfig(t, bsvc, "tandem-b")
	seed := mustService(t, c, "seed")

	// seed copies compose/tandem-b/primary_location into the volume that is
	// tandem-b's data dir, and never touches tandem-a's.
	bVol := bsvc.source(b.DataDir)
	seedData := seed.target(bVol)
	seedSrc := seed.target("./compose/tandem-b")
	if seedData == "" || seedSrc == "" {
		t.Fatalf("seed must mount ./compose/tandem-b and %s (got %q, %q)", bVol, seedSrc, seedData)
	}
	if seed.target("tandem-a-data") != "" {
		t.Error("seed mounts tandem-a's data dir: tandem-a must start as the primary")
	}
	script := strings.Join(seed.Command, " ")
	if want := "cp " + seedSrc + "/primary_location " + seedData + "/primary_location"; !strings.Contains(script, want) {
		t.Errorf("seed command does not run %q:\n%s", want, script)
	}
	if d, ok := bsvc.DependsOn["seed"].(map[string]any); !ok || d["condition"] != "service_completed_successfully" {
		t.Errorf("tandem-b must wait for seed to complete, got %v", bsvc.DependsOn["seed"])
	}
	raw, err := os.ReadFile(filepath.Join("compose", "tandem-b", config.PrimaryLocationFile))
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := config.ParsePrimaryLocation(string(raw))
	if err != nil {
		t.Fatalf("tandem-b primary_location: %v", err)
	}
	ah, ap := a.AdvertiseHostPort()
	if host != "tandem-a" || host != ah || port != ap {
		t.Errorf("tandem-b primary_location is %s:%d, want tandem-a's advertise %s:%d", host, port, ah, ap)
	}
}

func TestComposeAgents(t *testing.T) {
	c := loadCompose(t)
	a := serverConfig(t, mustService(t, c, "tandem-a"), "tandem-a")
	seed := mustService(t, c, "seed")
	seedAgents := seed.target(agentsVolume)
	seedSrc := seed.target("./compose/agents")
	if seedAgents == "" || seedSrc == "" {
		t.Fatalf("seed must mount ./compose/agents and the %q volume", agentsVolume)
	}
	for _, name := range agentServices {
		s := mustService(t, c, name)
		if len(s.Command) == 0 || s.Command[0] != "agent" {
			t.Errorf("%s: command %q does not run `tandem agent`", name, s.Command)
			continue
		}
		mnt := s.target(agentsVolume)
		p := s.flag("--config")
		if mnt == "" || !strings.HasPrefix(p, mnt+"/") {
			t.Errorf("%s: --config %q is not on the shared %q volume (mounted at %q)", name, p, agentsVolume, mnt)
			continue
		}
		rel := strings.TrimPrefix(p, mnt+"/")
		// The seed loop copies SEED/agents/$a/conf/address.yaml into the volume.
		script := strings.Join(seed.Command, " ")
		if !strings.Contains(script, seedSrc+"/") || !strings.Contains(script, seedAgents+"/") || !strings.Contains(script, path.Base(rel)) {
			t.Errorf("seed does not copy %s from %s into %s", rel, seedSrc, seedAgents)
		}
		seedFile := filepath.Join("compose", "agents", filepath.FromSlash(rel))
		data, err := os.ReadFile(seedFile)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var addr struct {
			StompInterface string `yaml:"stomp_interface"`
			StompPort      int    `yaml:"stomp_port"`
			UseSSL         int    `yaml:"use_ssl"`
		}
		if err := yaml.Unmarshal(data, &addr); err != nil {
			t.Errorf("%s: %v", seedFile, err)
			continue
		}
		ah, ap := a.AdvertiseHostPort()
		if addr.StompInterface != ah || addr.StompPort != ap {
			t.Errorf("%s: points at %s:%d, want the primary %s:%d", seedFile, addr.StompInterface, addr.StompPort, ah, ap)
		}
		if !strings.Contains(string(data), "#") {
			t.Errorf("%s: keep the comments: the demo shows they survive a rewrite", seedFile)
		}
		if _, ok := s.DependsOn["tandem-a"]; !ok {
			t.Errorf("%s: does not depend on tandem-a", name)
		}
	}
}

func TestDockerfile(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type stage struct {
		from, name string
		lines      []string
	}
	var stages []stage
	fromRE := regexp.MustCompile(`(?i)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?`)
	sc := bufio.NewScanner(f)
	var cont string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cont += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cont = cont+line, ""
		if m := fromRE.FindStringSubmatch(line); m != nil {
			stages = append(stages, stage{from: m[1], name: m[2]})
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: instruction before FROM: %s", line)
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: want a multi-stage build, got %d stage(s)", len(stages))
	}
	builder, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(builder.from, "golang:") {
		t.Errorf("Dockerfile: first stage FROM %s, want a golang image", builder.from)
	}
	static := false
	for _, l := range builder.lines {
		if strings.Contains(l, "go build") && strings.Contains(l, "CGO_ENABLED=0") && strings.Contains(l, "./cmd/tandem") {
			static = true
		}
	}
	if !static {
		t.Error("Dockerfile: the builder does not build ./cmd/tandem with CGO_ENABLED=0 (static)")
	}
	if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
		t.Errorf("Dockerfile: final stage FROM %s, want distroless static or scratch", final.from)
	}
	var user, entry string
	copied := false
	for _, l := range final.lines {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entry = l
		case "COPY":
			if strings.Contains(l, "--from="+builder.name) && strings.Contains(l, "/usr/local/bin/tandem") {
				copied = true
			}
		}
	}
	uid := strings.Split(user, ":")[0]
	if uid != "65532" {
		t.Errorf("Dockerfile: final stage USER %q, want 65532 (non-root)", user)
	}
	if !copied {
		t.Error("Dockerfile: final stage does not copy the binary from the builder to /usr/local/bin/tandem")
	}
	if !strings.Contains(entry, "/usr/local/bin/tandem") {
		t.Errorf("Dockerfile: ENTRYPOINT %q does not run tandem", entry)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func matchesAny(globs []string, path string) bool {
	for _, g := range globs {
		if ok, _ := filepath.Match(g, path); ok {
			return true
		}
	}
	return false
}

// Secure by default in the compose demo too: the keygen service writes the
// group key into the keys volume, both servers sign with it and every
// agent verifies with its public half.
func TestComposeGroupKey(t *testing.T) {
	c := loadCompose(t)
	kg := mustService(t, c, "keygen")
	if len(kg.Command) == 0 || kg.Command[0] != "keygen" || kg.flag("--out") == "" {
		t.Fatalf("keygen: command %q", kg.Command)
	}
	keysAt := kg.flag("--out")
	if kg.source(keysAt) != "keys" {
		t.Fatalf("keygen writes %s, which is not the keys volume", keysAt)
	}
	if _, ok := c.Volumes["keys"]; !ok {
		t.Fatal("volume keys is not declared")
	}
	for _, name := range []string{"tandem-a", "tandem-b"} {
		s := mustService(t, c, name)
		cfg := serverConfig(t, s, name)
		if cfg.Insecure || cfg.SigningKey == "" || s.source(filepath.Dir(cfg.SigningKey)) != "keys" || filepath.Base(cfg.SigningKey) != "signing.key" {
			t.Errorf("%s: signing_key %q (insecure %v) is not the keys volume's signing.key", name, cfg.SigningKey, cfg.Insecure)
		}
		if _, ok := s.DependsOn["keygen"]; !ok {
			t.Errorf("%s: does not wait for keygen", name)
		}
	}
	for _, name := range agentServices {
		s := mustService(t, c, name)
		if k := s.flag("--server-key"); s.source(filepath.Dir(k)) != "keys" || filepath.Base(k) != "signing.pub" {
			t.Errorf("%s: --server-key %q is not the keys volume's signing.pub", name, k)
		}
	}
}
