package broker

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/sirupsen/logrus"
)

// Benchmarks for `make bench` (-benchtime 1x): each iteration runs a fixed
// workload and reports its own metrics, so one iteration is meaningful.

func quietLog() *logrus.Logger {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	l.SetOutput(os.Stderr)
	return l
}

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit.
func raiseNoFile(b *testing.B, need uint64) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		b.Fatal(err)
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
	if r.Cur < need {
		b.Skipf("RLIMIT_NOFILE %d < %d needed", r.Cur, need)
	}
}

// latencyRounds publishes one 1 KB message per round through pub and waits
// until every subscription has it, returning all per-delivery latencies.
func latencyRounds(b *testing.B, pub Bus, subs []Subscription, dest string, rounds int) []time.Duration {
	var mu sync.Mutex
	lat := make([]time.Duration, 0, rounds*len(subs))
	got := make(chan struct{}, len(subs))
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range s.C() {
				ns, err := strconv.ParseInt(m.Headers["sent-ns"], 10, 64)
				if err != nil {
					continue // probe
				}
				d := time.Since(time.Unix(0, ns))
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
				got <- struct{}{}
			}
		}()
	}
	body := make([]byte, 1024)
	for r := 0; r < rounds; r++ {
		h := map[string]string{"sent-ns": strconv.FormatInt(time.Now().UnixNano(), 10)}
		if err := pub.Publish(context.Background(), dest, h, body); err != nil {
			b.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
		for i := 0; i < len(subs); i++ {
			select {
			case <-got:
			case <-timeout:
				b.Fatalf("round %d: %d of %d deliveries within 10s", r, i, len(subs))
			}
		}
	}
	for _, s := range subs {
		s.Close()
	}
	wg.Wait()
	return lat
}

func reportLatency(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(float64(len(lat)), "deliveries")
}

// BenchmarkEmbeddedLatency: delivery latency of a 1 KB topic message from one
// publisher to N subscribers, each on its own Link (connection), through an
// in-process embedded broker.
func BenchmarkEmbeddedLatency(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			raiseNoFile(b, uint64(2*n+256))
			srv := benchServer(b)
			const dest = "/topic/tandem.bench"
			pub := benchLink(b, srv.Addr())
			links := make([]*Link, n)
			subs := make([]Subscription, n)
			for i := range subs {
				links[i] = benchLink(b, srv.Addr())
				subs[i], _ = links[i].Subscribe(dest)
			}
			waitSubscribed(b, srv, dest, n)
			rounds := 200
			if n >= 100 {
				rounds = 50
			}
			b.ResetTimer()
			var lat []time.Duration
			for i := 0; i < b.N; i++ {
				lat = append(lat, latencyRounds(b, pub, subs, dest, rounds)...)
				if i+1 < b.N {
					for j := range subs {
						subs[j], _ = links[j].Subscribe(dest)
					}
					waitSubscribed(b, srv, dest, n)
				}
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// benchServer starts an in-process broker; closed in cleanup after the
// links (cleanups run last-in first-out).
func benchServer(b *testing.B) *Server {
	srv, err := StartServer(ServerConfig{Listen: "127.0.0.1:0", Log: quietLog(), MaxConnsPerSource: 2048, MaxConns: 4096})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return srv
}

func benchLink(b *testing.B, addr string) *Link {
	l, err := Dial(context.Background(), LinkConfig{URL: addr, Log: quietLog(), BufferSize: 64})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkEmbeddedPublishThroughput: a client publishes 20,000 messages
// (a 1 KB body and an agent report's eight headers) in windows of 1,000
// to a subscriber of the same broker process, over a TCP link
// (subscriber=link) or the server's in-process bus (subscriber=local, as a
// primary hears its agents' reports): messages a second, and the process's
// CPU per message (publisher, broker and subscriber together).
func BenchmarkEmbeddedPublishThroughput(b *testing.B) {
	for _, local := range []bool{false, true} {
		name := "subscriber=link"
		if local {
			name = "subscriber=local"
		}
		b.Run(name, func(b *testing.B) { publishThroughput(b, local) })
	}
}

func publishThroughput(b *testing.B, local bool) {
	srv := benchServer(b)
	const dest = "/topic/tandem.tput"
	pub := benchLink(b, srv.Addr())
	var subBus Bus
	if local {
		subBus = srv.Local(1 << 14)
	} else {
		l, err := Dial(context.Background(), LinkConfig{URL: srv.Addr(), Log: quietLog(), BufferSize: 1 << 14})
		if err != nil {
			b.Fatal(err)
		}
		must(b, l.WaitConnected(context.Background()))
		subBus = l
	}
	b.Cleanup(func() { subBus.Close() })
	sub, _ := subBus.Subscribe(dest)
	if !local {
		waitSubscribed(b, srv, dest, 1)
	}
	const n, window = 20000, 1000
	body := make([]byte, 1024)
	hdr := map[string]string{"tandem-version": "1", "failover-id": "6f1c2a7e-3b9d-4c1e-9a55-0f6e2d8b7c41", "epoch": "2",
		"node": "r1234/conf", "seq": "1796325890421", "sent-ms": "1796325890421", "role": "agent", "bound": "6f1c2a7e-3b9d-4c1e-9a55-0f6e2d8b7c41@2"}
	b.ResetTimer()
	var total, publishing, cpu time.Duration
	for i := 0; i < b.N; i++ {
		start, cpu0 := time.Now(), processCPU(b)
		for w := 0; w < n/window; w++ {
			t0 := time.Now()
			for j := 0; j < window; j++ {
				if err := pub.Publish(context.Background(), dest, hdr, body); err != nil {
					b.Fatal(err)
				}
			}
			publishing += time.Since(t0)
			timeout := time.After(30 * time.Second)
			for j := 0; j < window; j++ {
				select {
				case <-sub.C():
				case <-timeout:
					b.Fatalf("window %d: %d of %d delivered (dropped %d); broker %+v", w, j, window, sub.Dropped(), srv.Stats())
				}
			}
		}
		total += time.Since(start)
		cpu += processCPU(b) - cpu0
	}
	b.StopTimer()
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
	b.ReportMetric(float64(n*b.N)/publishing.Seconds(), "published-msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n*b.N), "cpu-µs/msg")
}

// processCPU is this process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEmbeddedIdleConnsRSS: resident memory of a separate broker process
// (this test binary re-executed in broker mode, i.e. StartServer and
// nothing else, like `tandem broker`) idle and with 1,000 idle STOMP
// connections, from /proc/PID/status VmRSS.
func BenchmarkEmbeddedIdleConnsRSS(b *testing.B) {
	const conns = 1000
	raiseNoFile(b, conns+256)
	for i := 0; i < b.N; i++ {
		ch := startChild(b, "broker", "127.0.0.1:0")
		l := ch.line(b, 10*time.Second)
		addr := strings.TrimPrefix(l, "LISTEN ")
		time.Sleep(200 * time.Millisecond) // let the runtime settle (memory measurement)
		idle := vmRSS(b, ch.cmd.Process.Pid)
		var ncs []net.Conn
		for j := 0; j < conns; j++ {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			ncs = append(ncs, nc)
			// Heart-beats as tandem's links ask for them (1 s).
			fmt.Fprint(nc, "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:1000,1000\n\n\x00")
			if f, err := frame.NewReader(bufio.NewReader(nc)).Read(); err != nil || f.Command != frame.CONNECTED {
				b.Fatalf("connect %d: %v %v", j, f, err)
			}
			fmt.Fprintf(nc, "SUBSCRIBE\nid:1\ndestination:/topic/tandem.idle.%d\n\n\x00", j%10)
		}
		time.Sleep(500 * time.Millisecond)
		loaded := vmRSS(b, ch.cmd.Process.Pid)
		b.ReportMetric(idle/1024, "idle-rss-MB")
		b.ReportMetric(loaded/1024, "rss-1000conns-MB")
		b.ReportMetric((loaded-idle)/conns, "KB/conn")
		for _, nc := range ncs {
			nc.Close()
		}
		ch.kill()
	}
}

// vmRSS returns VmRSS of pid in KiB.
func vmRSS(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			v, _ := strconv.ParseFloat(f[0], 64)
			return v
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkBrokerLatency: 1 KB topic message latency to one subscriber
// through each broker process (the embedded broker in a child process,
// ActiveMQ, RabbitMQ), both ends on Links.
func BenchmarkBrokerLatency(b *testing.B) {
	for _, kind := range contractKinds {
		b.Run(kind, func(b *testing.B) {
			br := sharedBroker(b, kind)
			cfg := br.linkConfig()
			cfg.Log = quietLog()
			pub, err := Dial(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			subl, err := Dial(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer subl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			must(b, pub.WaitConnected(ctx))
			must(b, subl.WaitConnected(ctx))
			dest := fmt.Sprintf("/topic/tandem.bench.%d", time.Now().UnixNano())
			b.ResetTimer()
			var lat []time.Duration
			for i := 0; i < b.N; i++ {
				s := subscribeSettledB(b, pub, subl, dest)
				lat = append(lat, latencyRounds(b, pub, []Subscription{s}, dest, 500)...)
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// subscribeSettledB subscribes and waits until a probe arrives.
func subscribeSettledB(b *testing.B, pub, sub Bus, dest string) Subscription {
	s, err := sub.Subscribe(dest)
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		_ = pub.Publish(context.Background(), dest, map[string]string{"probe": "1"}, nil)
		select {
		case <-s.C():
			time.Sleep(100 * time.Millisecond) // let other probes land
			for len(s.C()) > 0 {
				<-s.C()
			}
			return s
		case <-time.After(100 * time.Millisecond):
		}
	}
	b.Fatal("subscription never became active")
	return nil
}
