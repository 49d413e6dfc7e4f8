package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// Presence.Pending is the oldest change that concerns the node and that
// it has not converged: a change to a type no configuration of the node
// subscribes to never sets it, one to a subscribed type does (held here
// by a pause), and converging it makes the node no longer behind.
func TestPendingIsTheOldestChangeThatConcernsTheNode(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	n := startAgent(t, etcd, "web1")
	rev := n.put(t, "sites/a", `{"v": "one"}`)
	n.reported(t, "web1", rev, api.ResultConverged)
	_, err := n.admin.Put(context.Background(), "/ccm/paused", `{"by":"test","reason":"hold"}`)
	require.NoError(t, err)
	// A run that read its gate before the pause (the one the event of
	// sites/a queued during the first run) may still be under way, and
	// renders whatever its mirror holds by then: the puts wait until no
	// node holds or waits for the lock, read after the pause.
	require.Eventually(t, func() bool {
		resp, err := n.admin.Get(context.Background(), n.cluster.LockPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	}, 30*time.Second, 10*time.Millisecond, "no run that began before the pause is under way")

	n.put(t, "others/x", `{}`)
	sites := n.put(t, "sites/b", `{"v": "two"}`)
	pending := func() int64 {
		p, err := n.cluster.Presence(context.Background(), "web1")
		if err != nil || p == nil {
			return -1
		}
		return p.Pending
	}
	require.Eventually(t, func() bool { return pending() >= sites }, 30*time.Second, 10*time.Millisecond, "the change to sites is pending")
	assert.Equal(t, sites, pending(), "the earlier change to a type nothing subscribes to never concerned the node")
	v, err := n.cluster.View(context.Background())
	require.NoError(t, err)
	require.Len(t, v.Nodes, 1)
	assert.True(t, v.Nodes[0].Behind, "a pending change makes the node behind")

	_, err = n.admin.Delete(context.Background(), "/ccm/paused")
	require.NoError(t, err)
	n.reported(t, "web1", sites, api.ResultConverged)
	require.Eventually(t, func() bool {
		v, err := n.cluster.View(context.Background())
		return err == nil && len(v.Nodes) == 1 && !v.Nodes[0].Behind
	}, 30*time.Second, 10*time.Millisecond, "converged: no longer behind")
}
