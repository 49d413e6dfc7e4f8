package accounts

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// toolEnv is the whole environment of the tools: no secret, and nothing
// of the agent's, reaches them.
var toolEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}

// Runner carries out one run's account changes with as few tool runs as
// the tools allow. Every account is created or changed by its own
// groupadd, useradd, usermod or groupmod, in the plan's order: no batch
// tool of shadow-utils serves a --root (newusers has no --prefix, its -R
// is broken in Debian 12's 4.13, and it takes clear-text passwords). Every
// password of the run, of new and existing users alike, is set by one
// chpasswd -e run that reads "name:hash" lines on its standard input
// (Flush). The zero Runner is ready to use; it is not safe for concurrent
// use.
type Runner struct {
	queued []Change
	// Ran is the argv of every tool run so far, in order. It never holds a
	// secret: a hash reaches chpasswd only on its standard input.
	Ran [][]string
	// Timeout bounds each tool run (zero: the caller's context alone). A
	// run cut off by it, or by the caller's context, fails with
	// ErrNodeFailure.
	Timeout time.Duration
}

// passwordChunk is the most lines one chpasswd run reads: its time grows
// faster than its input (it rewrites the shadow file per line), and each
// run has its own Timeout.
const passwordChunk = 1000

// Run carries out c. A change that sets a password is queued for Flush
// (queued is true, and nothing ran); any other runs its steps now, one
// tool run each. An error names the change as ccm plan shows it, and what
// the tool said.
func (r *Runner) Run(ctx context.Context, c Change) (queued bool, err error) {
	if c.setsPassword() {
		r.queued = append(r.queued, c)
		return true, nil
	}
	for _, s := range c.Steps {
		out, err := r.exec(ctx, s.Argv, "")
		if ee, ok := err.(*exec.ExitError); ok && s.Gone != 0 && ee.ExitCode() == s.Gone {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("%s: %s: %w: %s", c.Line, s.Argv[0], err, strings.TrimSpace(string(out)))
		}
	}
	return false, nil
}

// Queued is the number of passwords waiting for Flush.
func (r *Runner) Queued() int { return len(r.queued) }

// Result is what became of one change a Runner queued.
type Result struct {
	Change Change
	Err    error // nil: the password is set
}

// Flush sets the queued passwords, but those skip reports (a held
// object's, whose account is left as it is), with one chpasswd -e run per
// root (a run has one), and empties the queue. chpasswd changes all or
// nothing: when it refuses, the lines it names ("line N") fail with what
// it said, and the rest are set without them (setPasswords); a failure
// that names no line is the node's (ErrNodeFailure). Above passwordChunk
// lines, the queue is set in chunks of that many, one run each; after a
// chunk failed for the node, the rest are not run and fail with it. The
// results are in the order of the queue, root by root.
func (r *Runner) Flush(ctx context.Context, skip func(Change) bool) []Result {
	byRoot := map[string][]Change{}
	var roots []string
	for _, c := range r.queued {
		if skip != nil && skip(c) {
			continue
		}
		if _, ok := byRoot[c.root]; !ok {
			roots = append(roots, c.root)
		}
		byRoot[c.root] = append(byRoot[c.root], c)
	}
	r.queued = nil
	var results []Result
	var node error // the first failure of the node's
	for _, root := range roots {
		for cs := range slices.Chunk(byRoot[root], passwordChunk) {
			if node != nil {
				for _, c := range cs {
					results = append(results, Result{Change: c, Err: fmt.Errorf("%s: not run: %w", c.Line, node)})
				}
				continue
			}
			for i, err := range r.setPasswords(ctx, root, cs) {
				results = append(results, Result{Change: cs[i], Err: err})
				if node == nil && errors.Is(err, ErrNodeFailure) {
					node = err
				}
			}
		}
	}
	return results
}

// ErrNodeFailure marks a tool run that failed for the node rather than for
// an account: a tool missing or cut off by its Timeout, or a chpasswd
// refusal that names no line (the shadow file's lock held, a file it
// cannot write). No customer's data can cause one: every field was
// typed, and a tool's time is not theirs to set.
var ErrNodeFailure = errors.New("a failure of the node's, not of an account's")

// setPasswords sets the passwords of cs under root with one chpasswd run,
// and returns each change's error. A refusal chpasswd names ("line N")
// is that account's, and the rest run again without it. A failure that
// names no line (the shadow file's lock held, a file it cannot write, a
// run cut off by its Timeout) is the node's: every line fails with
// ErrNodeFailure, and none runs again alone, which had cost a run (and,
// with the lock held, 15 s) per line.
func (r *Runner) setPasswords(ctx context.Context, root string, cs []Change) []error {
	errs := make([]error, len(cs))
	var in strings.Builder
	var lines []int // the index in cs of each input line
	for i, c := range cs {
		line, err := passwordLine(c)
		if err != nil {
			errs[i] = err
			continue
		}
		in.WriteString(line)
		lines = append(lines, i)
	}
	if len(lines) == 0 {
		return errs
	}
	out, err := r.exec(ctx, chpasswd(root), in.String())
	if err == nil {
		return errs
	}
	said := strings.TrimSpace(string(out))
	named := refusedLines(said, len(lines))
	if len(named) == 0 || errors.Is(err, ErrNodeFailure) {
		for _, i := range lines {
			errs[i] = fmt.Errorf("%s: chpasswd: %w: %w: %s", cs[i].Line, ErrNodeFailure, err, said)
		}
		return errs
	}
	var rest []int
	for n, i := range lines {
		if what, ok := named[n+1]; ok {
			errs[i] = fmt.Errorf("%s: chpasswd: %w: %s", cs[i].Line, err, what)
		} else {
			rest = append(rest, i)
		}
	}
	if len(rest) == 0 {
		return errs
	}
	sub := make([]Change, len(rest))
	for n, i := range rest {
		sub[n] = cs[i]
	}
	for n, err := range r.setPasswords(ctx, root, sub) {
		errs[rest[n]] = err
	}
	return errs
}

// lineSaid is how chpasswd names a refused input line.
var lineSaid = regexp.MustCompile(`(?m)^chpasswd: line ([0-9]+): (.*)$`)

// refusedLines maps the input lines chpasswd names in what it said (out)
// to what it said of each; nil when it names one outside 1 to n.
func refusedLines(out string, n int) map[int]string {
	named := map[int]string{}
	for _, m := range lineSaid.FindAllStringSubmatch(out, -1) {
		k, err := strconv.Atoi(m[1])
		if err != nil || k < 1 || k > n {
			return nil
		}
		named[k] = m[2]
	}
	return named
}

// passwordLine is the line of chpasswd's input for c: the name and the
// hash, both parsed by Plan (declared.go). A character that would end the
// field or the line can never be in either; it is refused here all the
// same, since this line is where it would do harm.
func passwordLine(c Change) (string, error) {
	if err := CheckName("name", c.Name); err != nil {
		return "", fmt.Errorf("%s: %w", c.Line, err)
	}
	if _, err := ParseHash(string(c.hash)); err != nil || strings.ContainsAny(string(c.hash), ":\n\r\x00") {
		return "", fmt.Errorf("%s: refused: the hash is not one Plan parsed", c.Line)
	}
	return c.Name + ":" + string(c.hash) + "\n", nil
}

// chpasswd sets hashed passwords read from its standard input, under
// root (it has no --prefix: --root chroots into root).
func chpasswd(root string) []string {
	if root == "" || root == "/" {
		return []string{"chpasswd", "-e"}
	}
	return []string{"chpasswd", "-e", "--root", root}
}

// exec runs argv with no shell, the tools' environment and stdin (""
// for none), and records argv in r.Ran.
func (r *Runner) exec(ctx context.Context, argv []string, stdin string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("accounts: a step with no argv")
	}
	r.Ran = append(r.Ran, slices.Clone(argv))
	tool, err := toolPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNodeFailure, err)
	}
	if r.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, tool, argv[1:]...)
	cmd.Env = toolEnv
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	// The tool and what it starts (chpasswd and useradd run nscd and
	// sss_cache) are one process group, killed whole when ctx ends; a
	// child that keeps the output pipe open is waited for no longer than
	// toolWaitDelay, so a hung helper cannot hold the run (and the lock).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = toolWaitDelay
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrWaitDelay) {
		// A helper the tool left holds its output: it goes with its
		// group, which it keeps alive (so the group's ID is not reused).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		err = fmt.Errorf("%w: cut off after %s: %w (%w)", ErrNodeFailure, r.Timeout, ctx.Err(), err)
	case errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success():
		// The tool succeeded; a helper it left held its output.
		err = nil
	}
	return out, err
}

// toolWaitDelay bounds the wait for a tool's output once it was killed.
const toolWaitDelay = 2 * time.Second

// toolDirs are where the account tools are looked up: the tools'
// environment's PATH, never the agent's own.
var toolDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// toolPath returns the tool named name from toolDirs.
func toolPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, strings.Join(toolDirs, ":"))
}
