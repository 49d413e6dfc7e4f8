package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
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
		n.reported(t, 1, api.ResultConverged)
	}
	return nodes
}

func TestBatchOfTwoRunsTwoNodesAtOnceNeverThree(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "on_change.log")
	nodes := agents(t, etcd, 6, log, "/nonexistent", "1")
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
	// Each agent has taken in the pause (its own report), so it starts
	// no new attempt; then none is in the lock queue.
	for _, n := range nodes {
		eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(n.ag.Metrics().Paused) == 1 }, "%s: ccm_paused is 1", n.name)
	}
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
	assert.Regexp(t, `node0\s+paused\s+dir\s+\d+\s+yes`, r.stdout)

	// apply --once is held back too: exit 3.
	one := newNode(t, "node0", nodes[0].root, etcd.Endpoints())
	one.configDir = siteConfig(t, "node0", log, "/nonexistent", "0")
	r = one.run("", "apply", "--once")
	assert.Equal(t, 3, r.code)
	assert.Regexp(t, `the rollout is paused by \S+ since \S+ \(maintenance window\); ccm resume --pause lifts it`, r.stderr)

	// ccm resume clears the failure flag only: someone's pause stays,
	// and it says whose it is.
	r = admin.action("resume")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Nothing to resume: the failure flag was not set.")
	assert.Contains(t, r.stdout, "The rollout stays paused by ")
	assert.Contains(t, r.stdout, "(maintenance window); ccm resume --pause lifts it.")
	r = admin.action("status")
	assert.Regexp(t, `node0\s+paused\s+dir\s+\d+\s+yes`, r.stdout, "still paused after ccm resume")

	r = admin.action("resume", "--pause")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `Pause lifted: it was \S+'s, since \S+ \(maintenance window\)\.`, r.stdout)
	converged(t, nodes, rev, 1, "held")
}

func TestPlanCheckRunsChecksOnCopiesAndWritesNothing(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(`subscribes: [sites]
files:
  - path: '/sites/{{ .Object.ID }}.conf'
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
    check: [sh, -c, 'grep -q good "$0" || { echo "not good: $(cat "$0")"; exit 1; }', '{{ .Staged }}']
`), 0o644))
	n := newNode(t, "n", dir, etcd.Endpoints())
	tmp := t.TempDir()
	n.env = []string{"TMPDIR=" + tmp}
	putSites(t, etcd, 1, "good")
	r := n.run("", "plan", "--check", "--label", "x=y", "--color", "never")
	require.Equal(t, 2, r.code, "changes, every check passes: %s%s", r.stdout, r.stderr)
	assert.Contains(t, r.stdout, "Checks: 1 files checked, 0 would fail.")

	cli := etcd.Client(t)
	_, err := cli.Put(context.Background(), "/ccm/objects/sites/s001", `{"v": "bad"}`)
	require.NoError(t, err)
	r = n.run("", "plan", "--check", "--label", "x=y", "--color", "never")
	assert.Equal(t, 1, r.code, r.stdout)
	assert.Contains(t, r.stdout, "! check fails: /sites/s001.conf (configuration sites)")
	assert.Contains(t, r.stdout, "not good: bad")
	assert.Contains(t, r.stdout, "Checks: 2 files checked, 1 would fail.")
	assert.Empty(t, tree(t, n.root), "nothing written under the root")
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	assert.Empty(t, entries, "no copy left behind")
}

func TestACanaryConvergesAloneThenTheRestInBatches(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "on_change.log")
	marker := filepath.Join(t.TempDir(), "broken")
	nodes := agents(t, etcd, 6, log, marker, "1")
	admin := caller(t, etcd, t.TempDir())
	r := admin.action("rollout", "set", "--batch", "3", "--canary")
	require.Equal(t, 0, r.code, r.stderr)

	rev := putSites(t, etcd, 1, "v1")
	converged(t, nodes, rev, 1, "v1")
	var runs []interval
	eventually(t, 10*time.Second, func() bool { runs = intervals(t, log); return len(runs) == 6 }, "one on_change per node")
	canary := runs[0]
	for _, r := range runs[1:] {
		assert.Greater(t, r.start, canary.end, "%s started before the canary %s finished", r.node, canary.node)
	}
	assert.Equal(t, 3, maxOverlap(runs[1:]), "then three at a time: %v", runs)

	// A failing canary: the flag goes up and nobody else applies.
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	bad := putSites(t, etcd, 1, "v2")
	c := cluster.New(nodes[0].cli, cluster.Options{})
	failed := failedNode(t, c, "the canary fails and raises the flag")
	for _, n := range nodes {
		if n.name == failed {
			continue
		}
		s := n.reported(t, 0, api.ResultHalted)
		assert.Less(t, s.Converged, bad)
		assert.Equal(t, "v1\n", n.read("/sites/s000.conf"), "%s is untouched", n.name)
	}
	assert.Len(t, intervals(t, log), 6, "no other node ran on_change")
}
