package test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// A node killed in the middle of a run's renames rolls the run back when
// its agent starts, before it queues for the lock: while another node
// holds the lock, the files are already back at what the node last
// converged, not half of the new state until its turn.
func TestACrashMidRenameIsRolledBackBeforeTheLockIsTaken(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	dir := t.TempDir()
	n := newNode(t, "web1", crashConfig(t, filepath.Join(dir, "log"), filepath.Join(dir, "broken")), etcd.Endpoints())
	put := func(v string) {
		_, err := cli.Put(context.Background(), "/ccm/objects/sites/a", `{"v":"`+v+`"}`)
		require.NoError(t, err)
	}
	put("v1")
	require.Equal(t, 0, n.run("", "apply", "--once").code)
	put("v2")
	crash(t, n, "renamed", "")
	require.Equal(t, "v2\n", n.read("/sites/a.conf"), "killed after the rename")

	holdLock(t, etcd, "web9")
	ag, err := agent.New(agent.Options{Client: etcd.Client(t), Node: "web1", ConfigDir: n.configDir, Root: n.root, StateDir: n.state,
		LockTTL: 2 * time.Second, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waiting(t, etcd, "web1")
	assert.Equal(t, "v1\n", n.read("/sites/a.conf"), "rolled back before its turn")
	entries, _ := os.ReadDir(filepath.Join(n.state, "journal"))
	assert.Empty(t, entries, "the journal is gone")
}
