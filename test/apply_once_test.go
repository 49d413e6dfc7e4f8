package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// guardConfig writes a configuration whose one file lives in a fresh
// directory of the real filesystem, so that a refusal that does not hold
// shows (and harms nothing) even with --root /.
func guardConfig(t *testing.T) (dir, file string) {
	t.Helper()
	dir, file = t.TempDir(), filepath.Join(t.TempDir(), "written-by-apply")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "guard.yaml"), []byte(fmt.Sprintf("files:\n  - {path: %q, content: \"x\\n\"}\n", file)), 0o644))
	return dir, file
}

// ccm apply --once from an operator's shell must not converge the machine
// it runs on by accident: it needs the node named, and it refuses a node
// whose agent runs on another host, and a node never seen with --root /.
func TestApplyOnceRefusesTheWrongMachine(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir, file := guardConfig(t)

	// No --node, no CCM_NODE: refused, whatever the hostname.
	r := caller(t, etcd, dir).run("", "apply", "--once", "--root", "/")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "apply --once converges this machine as a node: name it with --node or CCM_NODE")

	// A node never seen, with --root /: refused; --yes converges it.
	ghost := newNode(t, "ghost", dir, etcd.Endpoints())
	r = ghost.run("", "apply", "--once", "--root", "/")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "node ghost was never seen in this cluster, and --root is /")
	assert.NoFileExists(t, file)
	r = ghost.run("", "apply", "--once", "--root", "/", "--yes")
	require.Equal(t, 0, r.code, r.stderr)
	assert.FileExists(t, file)
	require.NoError(t, os.Remove(file))

	// A node whose live agent runs on another host: refused, naming it.
	cli := etcd.Client(t)
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	require.NoError(t, err)
	c := cluster.New(cli, cluster.Options{})
	_, err = cli.Put(ctx, c.AliveKey("web1"), fmt.Sprintf(`{"node":"web1","host":"web1.example","lease":"%x","since":"2026-12-01T10:00:00Z"}`, lease.ID), clientv3.WithLease(lease.ID))
	require.NoError(t, err)
	web1 := newNode(t, "web1", dir, etcd.Endpoints())
	r = web1.run("", "apply", "--once")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "node web1 has a live agent on host web1.example (since 2026-12-01T10:00:00Z)")
	r = web1.run("", "apply", "--once", "--yes")
	assert.Equal(t, 0, r.code, r.stderr)
}

// On a terminal, apply --once shows the plan's summary and asks first;
// anything but yes does nothing. It runs in tmux, and the test waits for
// what the screen shows.
func TestApplyOnceAsksOnATerminal(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed (.ci/run installs it)")
	}
	etcd := etcdtest.New(t, 1)
	dir, file := guardConfig(t)
	state := t.TempDir()
	session := fmt.Sprintf("ccm-apply-%d", time.Now().UnixNano())
	run := func(answer, want string) string {
		t.Helper()
		command := strings.Join([]string{ccmBin, "--endpoints", strings.Join(etcd.Endpoints(), ","), "--config-dir", dir,
			"--state-dir", state, "--root", "/", "--node", "term1", "--log-level", "error", "apply", "--once"}, " ")
		// The session stays after the command ends (remain-on-exit), so
		// that its last screen can be read.
		require.NoError(t, exec.Command("tmux", "new-session", "-d", "-x", "200", "-y", "20", "-s", session, command+"; echo exit=$?; sleep 60").Run())
		t.Cleanup(func() { _ = exec.Command("tmux", "kill-session", "-t", session).Run() })
		screen := func() string {
			out, _ := exec.Command("tmux", "capture-pane", "-p", "-t", session).Output()
			return string(out)
		}
		eventually(t, 20*time.Second, func() bool { return strings.Contains(screen(), "Converge it now? [y/N]") }, "the prompt: %s", screen())
		require.NoError(t, exec.Command("tmux", "send-keys", "-t", session, answer, "Enter").Run())
		eventually(t, 20*time.Second, func() bool { return strings.Contains(screen(), want) }, "%q on the screen: %s", want, screen())
		s := screen()
		_ = exec.Command("tmux", "kill-session", "-t", session).Run()
		return s
	}
	// The node was never seen, with --root /: --yes is needed anyway, so
	// the first step makes it known.
	r := newNode(t, "term1", dir, etcd.Endpoints())
	r.state = state
	res := r.run("", "apply", "--once", "--root", "/", "--yes")
	require.Equal(t, 0, res.code, res.stderr)
	require.NoError(t, os.Remove(file))

	s := run("n", "exit=1")
	assert.Contains(t, s, "Node term1, root /: Plan: 1 to create, 0 to change, 0 to remove.")
	assert.Contains(t, s, "not confirmed: nothing was done")
	assert.NoFileExists(t, file)
	run("y", "exit=0")
	assert.FileExists(t, file)
}
