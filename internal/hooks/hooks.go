// Package hooks runs the operator's takeover hooks (before_takeover,
// after_takeover, on_fenced): a shell command with a time limit, tandem's
// facts in its environment, and its output in tandem's log.
package hooks

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Run runs command with /bin/sh -c, adding env (KEY=VALUE) to the
// environment. It returns when the command ends or timeout passes (the whole
// process group is then killed). Each line of output is logged at info with
// the hook's name. An empty command does nothing.
func Run(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
	if command == "" {
		return nil
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	l := log.WithField("hook", name)
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		l.Info(sc.Text())
	}
	took := time.Since(start).Round(time.Millisecond)
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("hook %s: killed after %s (timeout)", name, timeout)
	} else if err != nil {
		err = fmt.Errorf("hook %s: %w", name, err)
	}
	if err != nil {
		l.WithError(err).WithField("took", took.String()).Warn("hook failed")
		return err
	}
	l.WithField("took", took.String()).Info("hook done")
	return nil
}
