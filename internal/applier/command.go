package applier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// maxOutput bounds how much command output an error carries.
const maxOutput = 4 << 10

// waitDelay is how long Wait waits for a killed command's process to go.
const waitDelay = 2 * time.Second

// ErrTimeout is returned for a command killed at its timeout.
var ErrTimeout = errors.New("timed out")

// outputFile is where a command's stdout and stderr go: an unlinked temp
// file, not a pipe, so that a command that exits 0 has succeeded even if a
// daemon it started keeps the descriptors open (Wait never waits for EOF).
func outputFile() (*os.File, error) {
	f, err := os.CreateTemp("", "ccm-command-*")
	if err != nil {
		return nil, fmt.Errorf("command output: %w", err)
	}
	os.Remove(f.Name())
	return f, nil
}

// tail returns the last maxOutput bytes of f.
func tail(f *os.File) string {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return ""
	}
	start := max(0, end-maxOutput)
	b := make([]byte, end-start)
	n, _ := f.ReadAt(b, start)
	return string(b[:n])
}

// command is one check, validate or on_change to run for a configuration.
type command struct {
	config string
	// dir is the directory of the configuration's YAML, where the
	// command runs (Options.ConfigDir when empty): a release's own.
	dir     string
	argv    []string
	timeout time.Duration
	// rename, when set, pairs each temp file a check reads with its final
	// path: the error names the final path, since the temp file is gone by
	// then.
	rename []string
	// show, when set, is what errors show instead of argv (a whole-set
	// check's own argv, not its hundreds of files).
	show []string
}

// runCommand runs c without a shell, in a new process group that is killed
// whole when the timeout expires or ctx is cancelled; on success, children
// it left running (a daemon it started) are left alone. It runs in the
// configuration directory, with CCM_NODE, CCM_ROOT and CCM_CONFIG set.
func (a *Applier) runCommand(ctx context.Context, c command) error {
	a.progress.mark()
	defer a.progress.mark()
	out, err := outputFile()
	if err != nil {
		return err
	}
	defer out.Close()
	ctx, stopFence := whileFenced(ctx, strings.Join(c.argv, " "))
	defer stopFence()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.argv[0], c.argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	cmd.Dir = cmp.Or(c.dir, a.opts.ConfigDir)
	cmd.Env = a.commandEnv(c.config)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrFenced) {
		return fmt.Errorf("%w, process group killed", cause)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%w after %s, process group killed", ErrTimeout, c.timeout)
	}
	shown := c.argv
	if c.show != nil {
		shown = c.show
	}
	argv, msg := strings.Join(shown, " "), strings.TrimSpace(tail(out))
	if len(c.rename) > 0 {
		r := strings.NewReplacer(c.rename...)
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
