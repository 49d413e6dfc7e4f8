package rollout_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// An agent that dies during a run leaves its crash file; the second crash
// in a row raises the node's failure record, naming the revision, instead
// of a crash loop that holds the lock and that status calls converged.
// The process dies before the run returns: here the file as the run saw
// it is put back, as a SIGKILL would leave it.
func TestTheSecondCrashInARowRaisesTheFailureRecord(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	crash := filepath.Join(t.TempDir(), "crash.json")
	var during []byte
	n := newNode(t, etcd, "a", func(context.Context) *applier.Report {
		during, _ = os.ReadFile(crash) // what a crash here leaves
		return &applier.Report{Outcomes: []applier.Outcome{{Config: "nginx", Result: applier.Changed}}}
	})
	c := cluster.New(etcd.Client(t), cluster.Options{Node: "a"})
	n.runner = rollout.New(rollout.Options{Cluster: c, Applier: n.applier, Node: "a", CrashFile: crash})

	require.NoError(t, n.turn(runkind.Full).Err)
	assert.NotEmpty(t, during, "the run is marked while it applies")
	assert.NoFileExists(t, crash, "a run that returns removes its mark")

	// The first run dies: the next runs again, marked as a crash's.
	require.NoError(t, os.WriteFile(crash, during, 0o600))
	require.NoError(t, n.turn(runkind.Full).Err, "after one crash the node runs again")
	// That one dies too: the next start raises the failure record.
	require.NoError(t, os.WriteFile(crash, during, 0o600))
	calls := n.applier.calls.Load()
	res := n.turn(runkind.Full)
	require.ErrorContains(t, res.Err, "crashed twice converging revision 42")
	assert.Equal(t, calls, n.applier.calls.Load(), "nothing is applied a third time")
	f, err := c.Failure(context.Background())
	require.NoError(t, err)
	require.NotNil(t, f, "the failure record halts the rollout")
	assert.Equal(t, rollout.Crashed, f.Configuration)
	assert.Equal(t, "a", f.Node)
}
