package test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/test/etcdtest"
)

// agents starts n agents on one etcd, each with the site configuration
// (on_change sleeping sleep), and waits for their first converge.
func agents(t *testing.T, etcd *etcdtest.Cluster, n int, log, marker, sleep string) []*agentNode {
	t.Helper()
	var nodes []*agentNode
	for i := range n {
		name := fmt.Sprintf("node%d", i)
		nodes = append(nodes, startAgent(t, etcd, name, siteConfig(t, name, log, marker, sleep), agentConfig{}))
	}
	for _, n := range nodes {
		n.reported(t, 1, cluster.ResultConverged)
	}
	return nodes
}

func TestBatchOfTwoRunsTwoNodesAtOnceNeverThree(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "on_change.log")
	nodes := agents(t, etcd, 6, log, "/nonexistent", "0.3")
	admin := caller(t, etcd, t.TempDir())
	r := admin.action("rollout", "set", "--batch", "2")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "batches of 2 nodes")

	rev := putSites(t, etcd, 2, "batched")
	converged(t, nodes, rev, 2, "batched")
	var runs []interval
	eventually(t, 10*time.Second, func() bool { runs = intervals(t, log); return len(runs) == 6 }, "one on_change per node")
	assert.Equal(t, 2, maxOverlap(runs), "two nodes at a time, never three: %v", runs)

	r = admin.action("status")
	assert.Contains(t, r.stdout, "Rollout: batches of 2 nodes")
}

func TestPauseHoldsEveryNodeAndResumeConvergesThemInTurn(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "on_change.log")
	nodes := agents(t, etcd, 3, log, "/nonexistent", "0")
	c := cluster.New(nodes[0].cli, cluster.Options{})
	admin := caller(t, etcd, t.TempDir())
	r := admin.action("pause", "--reason", "maintenance window")
	require.Equal(t, 0, r.code, r.stderr)

	rev := putSites(t, etcd, 1, "held")
	eventually(t, 20*time.Second, func() bool {
		v, err := c.View(context.Background())
		if err != nil || v.Pause == nil {
			return false
		}
		for _, n := range v.Nodes {
			if n.State != cluster.StatePaused || !n.Behind {
				return false
			}
		}
		return true
	}, "every node reports paused, and behind")
	for _, n := range nodes {
		assert.Empty(t, n.read("/sites/s000.conf"), "%s applied nothing while paused", n.name)
		assert.Less(t, n.status(t).Revision, rev)
	}
	r = admin.action("status")
	assert.Equal(t, 0, r.code, "a pause is no failure")
	assert.Contains(t, r.stdout, "maintenance window")
	assert.Regexp(t, `node0\s+paused\s+\d+\s+yes`, r.stdout)

	// apply --once is held back too: exit 3.
	one := newNode(t, "node0", nodes[0].root, etcd.Endpoints())
	one.configDir = siteConfig(t, "node0", log, "/nonexistent", "0")
	r = one.run("", "apply", "--once")
	assert.Equal(t, 3, r.code)
	assert.Contains(t, r.stderr, "the rollout is paused")

	r = admin.action("resume")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Pause lifted (paused by")
	converged(t, nodes, rev, 1, "held")
}
