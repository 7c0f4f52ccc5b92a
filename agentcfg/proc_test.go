package agentcfg

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as the child process of the multi-process tests: with
// AGENTCFG_CHILD=1 the test binary runs runChild instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("AGENTCFG_CHILD") == "1" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild: AGENTCFG_MODE=epochs rewrites AGENTCFG_FILES (comma separated)
// once per epoch in AGENTCFG_EPOCHS; AGENTCFG_MODE=loop rewrites them with
// epochs 1, 2, 3, ... until killed.
func runChild() error {
	files := strings.Split(os.Getenv("AGENTCFG_FILES"), ",")
	if f := childModes[os.Getenv("AGENTCFG_MODE")]; f != nil {
		return f(files)
	}
	switch os.Getenv("AGENTCFG_MODE") {
	case "epochs":
		for i, s := range strings.Split(os.Getenv("AGENTCFG_EPOCHS"), ",") {
			e, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return err
			}
			u := withEpoch(e)
			if i%2 == 0 {
				for _, r := range RewriteAll(files, u, BatchOptions{Workers: 2}) {
					if r.Outcome != Rewritten && r.Outcome != Unchanged {
						return fmt.Errorf("%s: %v %v", r.Path, r.Outcome, r.Err)
					}
				}
				continue
			}
			for _, f := range files {
				if r := CompareAndSwap(f, u, false); r.Outcome != Rewritten && r.Outcome != Unchanged {
					return fmt.Errorf("%s: %v %v", r.Path, r.Outcome, r.Err)
				}
			}
		}
		return nil
	case "loop":
		for e := uint64(1); ; e++ {
			u := withEpoch(e)
			u.StompInterface = "host" + strconv.FormatUint(e%7, 10)
			for _, r := range RewriteAll(files, u, BatchOptions{}) {
				if r.Outcome != Rewritten {
					return fmt.Errorf("%s: %v %v", r.Path, r.Outcome, r.Err)
				}
			}
		}
	}
	return fmt.Errorf("unknown mode")
}

// childModes are further child modes, registered by platform-specific tests.
var childModes = map[string]func(files []string) error{}

func child(ctx context.Context, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"AGENTCFG_CHILD=1"}, env...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

func makeAgents(t testing.TB, n int, content string) []string {
	dir := t.TempDir()
	var files []string
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, "agents", strconv.Itoa(i), "conf", "address.yaml")
		writeFile(t, p, content)
		files = append(files, p)
	}
	return files
}

// TestConcurrentProcessesNeverLoseOrLowerEpoch runs several processes that
// rewrite the same files with interleaved epochs, while the test watches
// every file's epoch: it never decreases, every read parses, and the final
// epoch is the maximum.
func TestConcurrentProcessesNeverLoseOrLowerEpoch(t *testing.T) {
	const procs, perProc = 4, 12
	files := makeAgents(t, 20, sample)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var cmds []*exec.Cmd
	for p := 0; p < procs; p++ {
		var epochs []string
		for k := 0; k < perProc; k++ {
			// Each process climbs, but their epochs interleave and a late
			// process often tries an epoch lower than what is on disk.
			epochs = append(epochs, strconv.Itoa(1+p+procs*k))
		}
		if p == procs-1 {
			// One process goes backwards: every write after its first must lose.
			for i, j := 0, len(epochs)-1; i < j; i, j = i+1, j-1 {
				epochs[i], epochs[j] = epochs[j], epochs[i]
			}
		}
		cmd := child(ctx, "AGENTCFG_MODE=epochs", "AGENTCFG_FILES="+strings.Join(files, ","), "AGENTCFG_EPOCHS="+strings.Join(epochs, ","))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	observed := 0
	go func() {
		defer wg.Done()
		last := make([]uint64, len(files))
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i, f := range files {
				a, err := ReadFile(f)
				if err != nil {
					t.Errorf("read during rewrite: %v", err)
					return
				}
				if a.FailoverEpoch < last[i] {
					t.Errorf("%s: epoch went down %d -> %d", f, last[i], a.FailoverEpoch)
					return
				}
				if a.FailoverEpoch > last[i] {
					observed++
				}
				last[i] = a.FailoverEpoch
			}
		}
	}()
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	max := uint64(procs * perProc)
	for _, f := range files {
		a, err := ReadFile(f)
		if err != nil || a.FailoverEpoch != max {
			t.Fatalf("%s: final %+v %v, want epoch %d", f, a, err, max)
		}
		if !strings.Contains(readFile(t, f), "local_interface: 10.9.9.9\n") {
			t.Fatalf("%s lost a key", f)
		}
	}
	t.Logf("observed %d epoch increases", observed)
}

// TestKill9LeavesOldOrNew SIGKILLs a process rewriting a batch in a loop at
// random moments; every file must then parse and be exactly the original or
// exactly the rendering of the epoch it carries.
func TestKill9LeavesOldOrNew(t *testing.T) {
	files := makeAgents(t, 40, sample)
	expected := func(e uint64) string {
		u := withEpoch(e)
		u.StompInterface = "host" + strconv.FormatUint(e%7, 10)
		out, err := Edit([]byte(sample), u)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var maxSeen uint64
	for round := 0; round < 6; round++ {
		// Reset so each child starts at epoch 1 again.
		for _, f := range files {
			writeFile(t, f, sample)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := child(ctx, "AGENTCFG_MODE=loop", "AGENTCFG_FILES="+strings.Join(files, ","))
		cmd.Stderr = nil
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait (with a deadline) until the child is writing, then a random moment.
		deadline := time.Now().Add(15 * time.Second)
		for readFile(t, files[len(files)-1]) == sample {
			if time.Now().After(deadline) {
				t.Fatal("child never wrote")
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.Intn(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cancel()
		for _, f := range files {
			got := readFile(t, f)
			if got == sample {
				continue
			}
			a, err := Parse([]byte(got))
			if err != nil {
				t.Fatalf("round %d: %s does not parse after kill -9: %v\n%q", round, f, err, got)
			}
			if got != expected(a.FailoverEpoch) {
				t.Fatalf("round %d: %s is neither old nor new:\n%q", round, f, got)
			}
			if a.FailoverEpoch > maxSeen {
				maxSeen = a.FailoverEpoch
			}
		}
		// Stray temporaries may remain; Expand must not list them.
		got, err := Expand([]string{filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(files[0]))), "*", "conf", "*")})
		if err != nil || len(got) != len(files) {
			t.Fatalf("Expand after kill: %d files, %v", len(got), err)
		}
	}
	t.Logf("highest epoch reached before a kill: %d", maxSeen)
}
