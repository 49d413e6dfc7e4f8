package cluster

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/etcdtest"
)

func TestScanNodesSkipsRepliesAndHopsTheSameNodes(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := New(cli, Options{})
	ctx := context.Background()
	// Names around "/" in byte order: "-" and "." sort before it, "0" after.
	for _, n := range []string{"web", "web-1", "web.a", "web0", "x"} {
		_, err := cli.Put(ctx, c.StatusKey(n), `{"node":"`+n+`","result":"converged","converged_revision":3}`)
		require.NoError(t, err)
		for _, id := range []string{"a", "b", "c"} {
			_, err := cli.Put(ctx, c.ReplyKey(n, id), `{"state":"succeeded"}`)
			require.NoError(t, err)
		}
	}
	lease, err := cli.Grant(ctx, 60)
	require.NoError(t, err)
	_, err = cli.Put(ctx, c.AliveKey("web-1"), `{"node":"web-1","labels":{"role":"web"}}`, clientv3.WithLease(lease.ID))
	require.NoError(t, err)
	_, err = cli.Put(ctx, c.AliveKey("web"), `{"node":"web","labels":{"role":"forged"}}`) // on no lease: no agent's
	require.NoError(t, err)
	_, err = cli.Put(ctx, c.ReplyKey("only-replies", "a"), `{}`)
	require.NoError(t, err)

	listed, err := c.scanNodes(ctx, 0)
	require.NoError(t, err)
	defer func(old int64) { scanLimit = old }(scanLimit)
	scanLimit = 2 // more keys than that: hop from node to node
	hopped, err := c.scanNodes(ctx, 0)
	require.NoError(t, err)

	var names []string
	for _, n := range listed {
		names = append(names, n.Name)
	}
	assert.Equal(t, []string{"web", "web-1", "web.a", "web0", "x"}, names, "sorted; a node with replies only is no node")
	assert.Equal(t, listed, hopped)
	assert.Equal(t, "web", hopped[1].Presence.Labels["role"])
	assert.Nil(t, hopped[0].Presence, "a presence on no lease is ignored")
	assert.Equal(t, int64(3), hopped[4].Status.Converged)
}

// More nodes than one transaction of etcd may read (its --max-txn-ops,
// 128): the scan reads them in chunks.
func TestScanNodesReadsManyNodesInChunks(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := New(cli, Options{})
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	require.NoError(t, err)
	for i := range 100 {
		n := fmt.Sprintf("n%03d", i)
		_, err := cli.Put(ctx, c.AliveKey(n), `{"node":"`+n+`"}`, clientv3.WithLease(lease.ID))
		require.NoError(t, err)
	}
	nodes, err := c.scanNodes(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, nodes, 100)
}
