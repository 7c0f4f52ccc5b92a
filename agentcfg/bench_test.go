package agentcfg

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

var benchSizes = []int{1000, 10000}

// benchAgents lays out n agents like real ones: DIR/agents/N/conf/address.yaml.
func benchAgents(b *testing.B, n int) []string {
	b.Helper()
	dir := b.TempDir()
	files := make([]string, n)
	for i := range files {
		files[i] = filepath.Join(dir, "agents", strconv.Itoa(i), "conf", "address.yaml")
		if err := os.MkdirAll(filepath.Dir(files[i]), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	return files
}

// resetAgents writes the original content back and flushes it, so that the
// timed part pays for no earlier dirty data.
func resetAgents(b *testing.B, files []string) {
	b.Helper()
	for _, f := range files {
		if err := os.WriteFile(f, []byte(sample), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := fsutil.SyncFS(filepath.Dir(files[0])); err != nil {
		b.Fatal(err)
	}
}

func defaultWorkers(n int) int {
	// Mirror RewriteAll's default so the floor gets the same parallelism.
	w := min(max(2*runtime.GOMAXPROCS(0), 4), 16)
	return min(w, n)
}

// floor writes each file's new content to a temporary file and renames it
// over the file: no lock, no YAML, no fsync, with RewriteAll's parallelism.
func floor(b *testing.B, files []string, content []byte) {
	floorT(files, content, defaultWorkers(len(files)))
}

func floorT(files []string, content []byte, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(files) {
					return
				}
				tmp := filepath.Join(filepath.Dir(files[i]), ".address.yaml.tmp-floor")
				if err := os.WriteFile(tmp, content, 0o644); err != nil {
					panic(err)
				}
				if err := os.Rename(tmp, files[i]); err != nil {
					panic(err)
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkFloor(b *testing.B) {
	content, err := Edit([]byte(sample), testUpdate)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("files=%d", n), func(b *testing.B) {
			files := benchAgents(b, n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				resetAgents(b, files)
				b.StartTimer()
				floor(b, files, content)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/file")
		})
	}
}

// BenchmarkRewriteAll measures a durable batch compare-and-swap of n files.
// Each iteration also times the floor on the same files (outside the
// benchmark timer) and reports the ratio as x-floor.
func BenchmarkRewriteAll(b *testing.B) {
	content, err := Edit([]byte(sample), testUpdate)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("files=%d", n), func(b *testing.B) {
			files := benchAgents(b, n)
			var floorTime time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				resetAgents(b, files)
				t0 := time.Now()
				floor(b, files, content)
				floorTime += time.Since(t0)
				resetAgents(b, files)
				b.StartTimer()
				res := RewriteAll(files, testUpdate, BatchOptions{})
				b.StopTimer()
				for _, r := range res {
					if r.Outcome != Rewritten {
						b.Fatalf("%s: %v %v", r.Path, r.Outcome, r.Err)
					}
				}
				b.StartTimer()
			}
			per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			fl := float64(floorTime.Nanoseconds()) / float64(b.N)
			b.ReportMetric(per/float64(n), "ns/file")
			b.ReportMetric(fl, "floor-ns/op")
			b.ReportMetric(per/fl, "x-floor")
		})
	}
}
func fsyncFS(p string) error { return fsutil.SyncFS(p) }

// BenchmarkConcurrentCAS is a fleet's burst after a rebind: n goroutines,
// one per file, each compare-and-swapping its own file at once, with an
// fsync each (fsync) or through one Flusher (flusher-P, P rewrites at
// work at once).
func BenchmarkConcurrentCAS(b *testing.B) {
	// Each rewrite under way holds a few descriptors.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	for _, n := range benchSizes {
		for _, mode := range []string{"fsync", "flusher-0", "flusher-2", "flusher-4", "flusher-16"} {
			b.Run(fmt.Sprintf("files=%d/%s", n, mode), func(b *testing.B) {
				files := benchAgents(b, n)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					resetAgents(b, files)
					var opt BatchOptions
					if mode != "fsync" {
						p, _ := strconv.Atoi(mode[len("flusher-"):])
						opt.Flusher = NewFlusher(p)
					}
					b.StartTimer()
					var wg sync.WaitGroup
					bad := make(chan Result, 1)
					for _, f := range files {
						wg.Add(1)
						go func() {
							defer wg.Done()
							if r := CompareAndSwapWith(f, testUpdate, opt); r.Outcome != Rewritten {
								select {
								case bad <- r:
								default:
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					if opt.Flusher != nil {
						opt.Flusher.Close()
					}
					select {
					case r := <-bad:
						b.Fatalf("%s: %v %v", r.Path, r.Outcome, r.Err)
					default:
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/file")
			})
		}
	}
}
