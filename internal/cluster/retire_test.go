package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// Retiring a node deletes every record ccm status shows of it, and only
// its own: a node whose name it prefixes (web10) keeps all of its.
// While its agent is alive it deletes nothing.
func TestRetireForgetsADeadNodeAndRefusesAnAliveOne(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	c := cluster.New(cli, cluster.Options{})
	records := func(node string) []string {
		return []string{c.StatusKey(node), c.ProblemKey(node), c.FailureKey(node), c.CanaryKey(node),
			c.QuarantineKey(node, "sites", "shop"), c.LabelsKey(node)}
	}
	for _, node := range []string{"web1", "web10"} {
		for _, key := range records(node) {
			_, err := cli.Put(ctx, key, `{"revision":1}`)
			require.NoError(t, err)
		}
	}
	_, err := cli.Put(ctx, c.ReplyKey("web1", "call1"), `{}`)
	require.NoError(t, err)

	agent, err := cluster.New(cli, cluster.Options{Node: "web1"}).NewSession(ctx, cluster.SessionOptions{TTL: 5 * time.Second, Presence: &api.Presence{}})
	require.NoError(t, err)
	_, err = c.Retire(ctx, "web1")
	require.ErrorIs(t, err, cluster.ErrNodeAlive)
	assert.Contains(t, err.Error(), c.AliveKey("web1"), "it names the presence")
	for _, key := range records("web1") {
		resp, err := cli.Get(ctx, key)
		require.NoError(t, err)
		assert.Len(t, resp.Kvs, 1, "an alive node keeps %s", key)
	}

	agent.Close() // revokes the lease: the agent is gone
	gone, err := c.Retire(ctx, "web1")
	require.NoError(t, err)
	var keys []string
	for _, r := range gone {
		keys = append(keys, r.Key)
	}
	assert.Equal(t, records("web1"), keys, "each record it deleted, in order")

	v, err := c.View(ctx)
	require.NoError(t, err)
	require.Len(t, v.Nodes, 1, "ccm status and the dashboard no longer show the node")
	assert.Equal(t, "web10", v.Nodes[0].Name)
	for _, key := range records("web10") {
		resp, err := cli.Get(ctx, key)
		require.NoError(t, err)
		assert.Len(t, resp.Kvs, 1, "web10 keeps %s", key)
	}
	resp, err := cli.Get(ctx, c.ReplyKey("web1", "call1"))
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "a reply stays for its caller")

	gone, err = c.Retire(ctx, "web1")
	require.NoError(t, err)
	assert.Empty(t, gone, "retiring again deletes nothing")
}

// A presence written by hand (on no lease) is no agent's: it does not
// stop a retire, and is deleted with the rest.
func TestRetireDeletesAPresenceOnNoLease(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	c := cluster.New(cli, cluster.Options{})
	_, err := cli.Put(ctx, c.AliveKey("web1"), `{}`)
	require.NoError(t, err)
	gone, err := c.Retire(ctx, "web1")
	require.NoError(t, err)
	assert.Equal(t, []cluster.Retired{{Key: c.AliveKey("web1"), Value: "{}"}}, gone)
	resp, err := cli.Get(ctx, c.NodePrefix("web1"), clientv3.WithPrefix())
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs)
}
