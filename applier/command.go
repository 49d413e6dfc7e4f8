package applier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// maxOutput bounds how much command output an error carries.
const maxOutput = 4 << 10

// waitDelay is how long a killed command's pipes may stay open.
const waitDelay = 2 * time.Second

// ErrTimeout is returned for a command killed at its timeout.
var ErrTimeout = errors.New("timed out")

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > maxOutput {
		t.b = t.b[len(t.b)-maxOutput:]
	}
	return len(p), nil
}

// command is one check, validate or on_change to run for a configuration.
type command struct {
	config  string
	argv    []string
	timeout time.Duration
	// staged, when set, is the temp file a check reads; the error names
	// the final path instead, since the temp file is gone by then.
	staged, final string
}

// runCommand runs c without a shell, in a new process group that is killed
// whole when the timeout expires or ctx is cancelled. It runs in the
// configuration directory, with CCM_NODE, CCM_ROOT and CCM_CONFIG set.
func (a *Applier) runCommand(ctx context.Context, c command) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.argv[0], c.argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	cmd.Dir = a.opts.ConfigDir
	cmd.Env = a.commandEnv(c.config)
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%w after %s, process group killed", ErrTimeout, c.timeout)
	}
	argv, msg := strings.Join(c.argv, " "), strings.TrimSpace(string(out.b))
	if c.staged != "" {
		r := strings.NewReplacer(c.staged, c.final)
		argv, msg = r.Replace(argv), r.Replace(msg)
	}
	if msg != "" {
		return fmt.Errorf("%q: %w: %s", argv, err, msg)
	}
	return fmt.Errorf("%q: %w", argv, err)
}

// commandEnv is ccm's environment without its etcd password and its own
// settings, plus what a command needs to know of the run.
func (a *Applier) commandEnv(config string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CCM_") {
			env = append(env, kv)
		}
	}
	return append(env, "CCM_NODE="+a.opts.Node.Name, "CCM_ROOT="+a.opts.Root, "CCM_CONFIG="+config)
}
