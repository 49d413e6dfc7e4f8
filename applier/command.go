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

// runCommand runs argv without a shell, in a new process group that is
// killed whole when the timeout expires or ctx is cancelled.
func runCommand(ctx context.Context, argv []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	cmd.Env = commandEnv()
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%w after %s, process group killed", ErrTimeout, timeout)
	}
	if msg := strings.TrimSpace(string(out.b)); msg != "" {
		return fmt.Errorf("%q: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return fmt.Errorf("%q: %w", strings.Join(argv, " "), err)
}

// commandEnv is the agent's environment without its etcd password.
func commandEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CCM_PASSWORD=") {
			env = append(env, kv)
		}
	}
	return env
}
