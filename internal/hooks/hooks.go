// Package hooks runs the operator's takeover hooks (before_takeover,
// after_takeover, on_fenced): a shell command with a time limit, tandem's
// facts in its environment, and its output in tandem's log.
package hooks

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Sentinel errors, wrapped by Run's error.
var (
	// ErrTimeout: the hook ran past its timeout and was killed.
	ErrTimeout = errors.New("hooks: timeout")
	// ErrCancelled: the caller's context ended (the role or the process
	// ended) and the hook's process group was killed.
	ErrCancelled = errors.New("hooks: cancelled")
	// ErrSignaled: the hook was ended by a signal it did not ask for (for
	// example the SIGTERM of a service stop reaching its process group).
	// It did not finish: a journal must not record it as done.
	ErrSignaled = errors.New("hooks: killed by a signal")
)

// MaxOutput is how much of a hook's output is kept for the log: the last
// MaxOutput bytes (a hook that prints without end costs no memory).
const MaxOutput = 64 << 10

// Func is Run's shape: the node takes it as a seam so tests can stand in
// for real processes.
type Func func(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error

// Run runs command with /bin/sh -c, adding env (KEY=VALUE) to the
// environment. It returns when the command ends, when timeout passes or
// when ctx ends; in the last two cases the whole process group is killed
// and has ended (or WaitDelay passed) before Run returns. The last
// MaxOutput bytes of output are logged at info, a line each, with the
// hook's name. An empty command does nothing.
func Run(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
	if command == "" {
		return nil
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out := &tail{max: MaxOutput}
	cmd.Stdout = out
	cmd.Stderr = out
	start := time.Now()
	err := cmd.Run()
	l := log.WithField("hook", name)
	if out.cut > 0 {
		l.WithField("bytes_dropped", out.cut).Info("(hook output cut: only its end is logged)")
	}
	sc := bufio.NewScanner(bytes.NewReader(out.buf))
	sc.Buffer(make([]byte, 0, 4096), MaxOutput+1)
	for sc.Scan() {
		l.Info(sc.Text())
	}
	took := time.Since(start).Round(time.Millisecond)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("hook %s: %w after %s (%v)", name, ErrCancelled, took, ctx.Err())
	case tctx.Err() == context.DeadlineExceeded:
		err = fmt.Errorf("hook %s: %w: killed after %s", name, ErrTimeout, timeout)
	case errors.As(err, &ee) && signaled(ee):
		err = fmt.Errorf("hook %s: %w: %w", name, ErrSignaled, err)
	case err != nil:
		err = fmt.Errorf("hook %s: %w", name, err)
	}
	if err != nil {
		l.WithError(err).WithField("took", took.String()).Warn("hook failed")
		return err
	}
	l.WithField("took", took.String()).Info("hook done")
	return nil
}

func signaled(ee *exec.ExitError) bool {
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return true
	}
	// sh -c reports a child killed by signal N as exit status 128+N.
	code := ee.ExitCode()
	return code > 128 && code <= 128+64
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
	cut int64
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > t.max {
		t.cut += int64(len(p) - t.max)
		p = p[len(p)-t.max:]
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.cut += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}
