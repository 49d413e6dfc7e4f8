package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// An agent frozen (SIGSTOP) past a handler's deadline, while the handler
// ran and exited by itself well within it, reports what the handler did:
// its exit status and its output, not a timeout. The timeout is the
// handler's own run, not the agent's view of the clock.
func TestAFrozenAgentKeepsTheResultOfAHandlerThatEndedInTime(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	marks := t.TempDir()
	started, done := filepath.Join(marks, "started"), filepath.Join(marks, "done")
	dir := actionConfig(t, map[string]string{"quick": "command: [BIN/quick]\nrun_as: {user: ME}\ntimeout: 2s\n"},
		map[string]string{"quick": fmt.Sprintf("echo started > %s\nsleep 0.5\necho the-output\necho done > %s\n", started, done)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	agentProc := n.start("agent", "--debounce", "0s")
	t.Cleanup(func() { _ = agentProc.Process.Signal(syscall.SIGCONT) })
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	sent, err := client.New(cli, client.Options{}).Send(context.Background(), client.Call{Action: "quick", To: client.Targets{Nodes: []string{"web1"}}})
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "the handler started")
	require.NoError(t, agentProc.Process.Signal(syscall.SIGSTOP))
	frozen := time.Now()
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(done); return err == nil }, "the handler ended by itself")
	// The one wait on the clock: the agent stays frozen past the
	// handler's deadline (2 s from its start, before frozen).
	eventually(t, 20*time.Second, func() bool { return time.Since(frozen) > 3*time.Second }, "the deadline passed while the agent was frozen")
	require.NoError(t, agentProc.Process.Signal(syscall.SIGCONT))

	var r *api.Reply
	eventually(t, 30*time.Second, func() bool {
		r = replyOf(t, cli, sent.ID, "web1")
		return r != nil && r.State != api.StateRunning && r.State != api.StatePending && r.State != ""
	}, "the node replies")
	assert.Equal(t, api.StateSucceeded, r.State, r.Error)
	if assert.NotNil(t, r.ExitCode) {
		assert.Equal(t, 0, *r.ExitCode)
	}
	assert.Contains(t, string(r.Output), "the-output", "its output is kept")
}
