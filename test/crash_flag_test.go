package test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// An agent that dies during its run, again and again (here its on_change
// kills it, as an out-of-memory kill would), does not crash-loop under the
// lock while status calls it converged: the second crash in a row raises
// the node's failure record, naming the revision, and the rollout halts.
func TestAnAgentThatCrashesTwiceRaisesTheFailureRecord(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "k.yaml"), []byte(`subscribes: [sites]
files:
  - {path: "/k/{{ .Object.ID }}", for_each: sites, content: x}
on_change:
  - [sh, -c, "kill -9 $PPID"]
`), 0o644))
	_, err := cli.Put(ctx, "/ccm/objects/sites/a", `{}`)
	require.NoError(t, err)
	n := newNode(t, "crashy", dir, etcd.Endpoints())
	for i := range 2 {
		proc := n.start("agent", "--debounce", "0s", "--lock-ttl", "2s")
		state, err := proc.Process.Wait()
		require.NoError(t, err)
		require.False(t, state.Success(), "run %d: the agent died in its run", i+1)
	}
	n.start("agent", "--debounce", "0s", "--lock-ttl", "2s")
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 60*time.Second, func() bool {
		f, err := c.Failure(ctx)
		return err == nil && f != nil
	}, "the failure record is raised")
	f, err := c.Failure(ctx)
	require.NoError(t, err)
	assert.Equal(t, "crashy", f.Node)
	assert.Equal(t, "(crash)", f.Configuration)
	assert.Contains(t, f.Error, "crashed twice converging revision")
}
