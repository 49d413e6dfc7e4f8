package actions

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	osuser "os/user"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/accounts"
)

// Output limits of a handler.
const (
	// MaxOutput bounds the stdout a reply carries; the rest is dropped.
	MaxOutput = 64 << 10
	// maxStderr bounds the stderr a failed reply's error carries.
	maxStderr = 4 << 10
	// drainDelay is how long the output of an exited handler is read
	// before its pipes are closed: a daemon that left its process group
	// may keep them open.
	drainDelay = 2 * time.Second
)

// defaultPath is the PATH of a handler's clean environment.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// identity is the UNIX user a handler runs as.
type identity struct {
	name     string
	uid, gid uint32
	groups   []uint32
	home     string
}

// identity resolves run_as for a request's parameters. A parameter that
// names root, a user below min_uid or no user at all is refused.
func (h *Handler) identity(params map[string]string) (*identity, error) {
	name := h.RunAs.User
	if h.RunAs.Param != "" {
		name = params[h.RunAs.Param]
	}
	u, err := osuser.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("run_as: no such user %q", name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("run_as: user %q has no numeric uid and gid", name)
	}
	if h.RunAs.Param != "" && (uid == 0 || int(uid) < h.RunAs.MinUID) {
		return nil, fmt.Errorf("run_as: user %q (uid %d) is below min_uid %d: a parameter never names root or a system user", name, uid, h.RunAs.MinUID)
	}
	if euid := os.Geteuid(); euid != 0 && uint64(euid) != uid {
		return nil, fmt.Errorf("run_as: the agent runs as uid %d, not root, and cannot switch to user %q (uid %d)", euid, name, uid)
	}
	id := &identity{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("run_as: groups of %q: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			id.groups = append(id.groups, uint32(n))
		}
	}
	if h.RunAs.Param != "" {
		if err := h.RunAs.checkGroups(name, append([]uint32{id.gid}, id.groups...)); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// DefaultDenyGroups are the groups that give a user root's reach, or
// another user's: the one list, shared with accounts of object data.
var DefaultDenyGroups = accounts.DefaultDenyGroups

// checkGroups refuses a user a parameter named whose primary or
// supplementary group breaks the group rule that accounts of object data
// follow too (accounts.GroupRule: min_gid and deny_groups).
func (r RunAs) checkGroups(user string, gids []uint32) error {
	rule := accounts.GroupRule{MinGID: r.MinGID, Deny: r.DenyGroups}
	for _, gid := range gids {
		name := strconv.FormatUint(uint64(gid), 10)
		if g, err := osuser.LookupGroupId(name); err == nil {
			name = g.Name
		}
		if err := rule.Check(name, int(gid)); err != nil {
			return fmt.Errorf("run_as: user %q: %w", user, err)
		}
	}
	return nil
}

// invocation is one handler process to run.
type invocation struct {
	handler *Handler
	req     *api.Request
	params  map[string]string // secrets unsealed
	id      *identity
	timeout time.Duration
	env     []string // CCM_NODE, CCM_ROOT and the like
	cgroups *Cgroups // nil: the process group alone contains the run
}

// outcome is how a handler process ended.
type outcome struct {
	state    string
	exitCode *int
	stdout   []byte
	stderr   []byte
	err      string
}

// environment is the handler's clean environment: nothing of the agent's,
// only what names the user, the run and the parameters.
func (inv *invocation) environment() []string {
	env := []string{
		"PATH=" + defaultPath, "LANG=C.UTF-8",
		"HOME=" + inv.id.home, "USER=" + inv.id.name, "LOGNAME=" + inv.id.name,
		"CCM_CONFIG=" + inv.req.Action, "CCM_ACTION_ID=" + inv.req.ID,
	}
	env = append(env, inv.env...)
	for _, n := range sortedKeys(inv.params) {
		if !inv.handler.Params[n].Secret { // a secret reaches stdin only: /proc/PID/environ is readable by the same user
			env = append(env, EnvName(n)+"="+inv.params[n])
		}
	}
	return env
}

// run starts the handler with its parameters as JSON on stdin, in its own
// process group, as its run_as user, and waits for it. At the timeout the
// whole group is killed; when the handler exits, whatever it left in its
// group is killed too. The handler dies with the agent (SIGKILL as parent
// death signal), so a crashed agent leaves nothing running.
func (inv *invocation) run() outcome {
	stdin, err := json.Marshal(orEmpty(inv.params))
	if err != nil {
		return outcome{state: api.StateFailed, err: err.Error()}
	}
	cmd := exec.Command(inv.handler.Command[0], inv.handler.Command[1:]...)
	cmd.Env = inv.environment()
	cmd.Dir = "/"
	if st, err := os.Stat(inv.id.home); err == nil && st.IsDir() {
		cmd.Dir = inv.id.home
	}
	cmd.Stdin = bytes.NewReader(stdin)
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if uint32(os.Geteuid()) != inv.id.uid {
		// A fresh process with the user's ids: nothing to give back.
		attr.Credential = &syscall.Credential{Uid: inv.id.uid, Gid: inv.id.gid, Groups: inv.id.groups}
	}
	var cg *cgroupRun
	var barrier *barrier
	if inv.cgroups != nil {
		if cg, err = inv.cgroups.start(inv.req.ID); err != nil {
			return outcome{state: api.StateFailed, err: "not started: " + err.Error()}
		}
		defer cg.end()
		if inv.cgroups.startsInto() {
			attr.UseCgroupFD, attr.CgroupFD = true, cg.fd
		} else if barrier, err = behindBarrier(cmd); err != nil {
			return outcome{state: api.StateFailed, err: "not started: " + err.Error()}
		}
	}
	cmd.SysProcAttr = attr
	stdout, stderr := &capped{max: MaxOutput}, &capped{max: maxStderr, keepTail: true}
	drain, err := pipeTo(cmd, stdout, stderr)
	if err != nil {
		barrier.close()
		return outcome{state: api.StateFailed, err: err.Error()}
	}
	if err := cmd.Start(); err != nil {
		barrier.close()
		drain.abort()
		return outcome{state: api.StateFailed, err: fmt.Sprintf("start %s: %v", inv.handler.Command[0], err)}
	}
	drain.started()
	if err := barrier.open(cmd.Process.Pid, cg); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		drain.wait(0)
		return outcome{state: api.StateFailed, err: fmt.Sprintf("not started: %s: %v", inv.handler.Command[0], err)}
	}
	pgid := cmd.Process.Pid
	killAll := func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		if cg != nil {
			cg.kill() // what left the group too
		}
	}
	// The timeout is the handler's own: the timer kills it only if it is
	// still running when the timer acts. An agent frozen past the
	// deadline (SIGSTOP, a stalled VM) wakes with the timer due and the
	// handler maybe long ended by itself: its exit status and output
	// stand, and it was not killed.
	var killed atomic.Bool
	timer := time.AfterFunc(inv.timeout, func() {
		if !stillRunning(pgid) {
			return
		}
		killed.Store(true)
		killAll()
	})
	waitErr := cmd.Wait()
	timer.Stop()
	timedOut := killed.Load()
	killAll() // leftovers: in its group, and in its cgroup
	drain.wait(drainDelay)
	o := outcome{stdout: stdout.bytes(), stderr: stderr.bytes()}
	if stdout.dropped > 0 {
		o.stdout = append(o.stdout, fmt.Sprintf("\n[ccm: %d more bytes of output dropped]", stdout.dropped)...)
	}
	var exitErr *exec.ExitError
	switch {
	case timedOut:
		o.state, o.err = api.StateTimedOut, fmt.Sprintf("killed with its process group after the timeout of %s", inv.timeout)
		if cg != nil {
			o.err = fmt.Sprintf("killed with its process group and its cgroup after the timeout of %s", inv.timeout)
		}
	case waitErr == nil:
		o.state, o.exitCode = api.StateSucceeded, new(int)
	case errors.As(waitErr, &exitErr):
		code := exitErr.ExitCode()
		o.state, o.exitCode = api.StateFailed, &code
		o.err = fmt.Sprintf("exit status %d", code)
		if code < 0 {
			o.err = exitErr.Error()
		}
		if msg := bytes.TrimSpace(o.stderr); len(msg) > 0 {
			o.err += ": " + string(msg)
		}
	default:
		o.state, o.err = api.StateFailed, waitErr.Error()
	}
	return o
}

// stillRunning reports whether the child pid has not ended: it is neither a
// zombie waiting to be reaped nor reaped already (waitid without reaping
// it, WNOWAIT).
func stillRunning(pid int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	// Linux zeroes info when the child has not changed state.
	return err == nil && info.Signo == 0
}

// barrierScript holds a handler at its start until the agent has moved it
// into its cgroup: it reads one line from fd 3, then execs the handler in
// its place (same process, group and credentials). If the agent closes
// the pipe without a line, it exits before the handler ever runs.
const barrierScript = `read -r _ <&3 || exit 126; exec "$@" 3<&-`

// barrier starts a handler behind barrierScript, where clone3 is refused
// and so CLONE_INTO_CGROUP cannot start it straight into its cgroup
// (Cgroups.startsInto). The shell is Debian's /bin/sh, which is
// essential; nothing of the handler runs before the move.
type barrier struct {
	r, w *os.File
}

// behindBarrier makes cmd start /bin/sh running barrierScript with the
// handler's command as its arguments.
func behindBarrier(cmd *exec.Cmd) (*barrier, error) {
	if cmd.Err != nil {
		return nil, cmd.Err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("barrier pipe: %w", err)
	}
	cmd.Args = append([]string{"sh", "-c", barrierScript, "ccm-handler", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = "/bin/sh"
	cmd.ExtraFiles = []*os.File{r}
	return &barrier{r: r, w: w}, nil
}

// open moves the started process into cg and lets it exec the handler.
// A nil barrier (the handler was started into its cgroup) does nothing.
func (b *barrier) open(pid int, cg *cgroupRun) error {
	if b == nil {
		return nil
	}
	defer b.close()
	if err := cg.move(pid); err != nil {
		return err
	}
	if _, err := b.w.Write([]byte("go\n")); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// close closes both ends; a process still behind it exits unrun.
func (b *barrier) close() {
	if b == nil {
		return
	}
	_ = b.r.Close()
	_ = b.w.Close()
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// drainer reads a process's stdout and stderr from pipes ccm owns, so
// that Wait returns when the process exits, not when the last holder of
// its output closes it.
type drainer struct {
	readers []*os.File
	writers []*os.File
	wg      sync.WaitGroup
}

func pipeTo(cmd *exec.Cmd, outs ...io.Writer) (*drainer, error) {
	d := &drainer{}
	for i, w := range outs {
		r, pw, err := os.Pipe()
		if err != nil {
			d.abort()
			return nil, fmt.Errorf("output pipe: %w", err)
		}
		d.readers, d.writers = append(d.readers, r), append(d.writers, pw)
		if i == 0 {
			cmd.Stdout = pw
		} else {
			cmd.Stderr = pw
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			_, _ = io.Copy(w, r)
		}()
	}
	return d, nil
}

// started closes the agent's copies of the write ends.
func (d *drainer) started() {
	for _, w := range d.writers {
		w.Close()
	}
}

// wait lets the readers finish for at most delay, then closes the pipes.
func (d *drainer) wait(delay time.Duration) {
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(delay):
	}
	for _, r := range d.readers {
		r.Close()
	}
	<-done
}

func (d *drainer) abort() {
	d.started()
	for _, r := range d.readers {
		r.Close()
	}
	d.wg.Wait()
}

// capped keeps the first max bytes written (or the last, with keepTail)
// and counts the rest.
type capped struct {
	max      int
	keepTail bool
	buf      []byte
	dropped  int64
}

// Write keeps what fits and counts the rest; it never fails, so a handler
// that writes too much is never blocked.
func (c *capped) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	if extra := len(c.buf) - c.max; extra > 0 {
		c.dropped += int64(extra)
		if c.keepTail {
			c.buf = append(c.buf[:0], c.buf[extra:]...)
		} else {
			c.buf = c.buf[:c.max]
		}
	}
	return len(p), nil
}

func (c *capped) bytes() []byte { return c.buf }
