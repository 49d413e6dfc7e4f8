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

// The history keeps records in the order they were made, never
// overwrites one, and each write deletes those past the retention.
func TestHistoryAppendsInOrderAndForgetsPastTheRetention(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	c := cluster.New(cli, cluster.Options{})
	now := time.Now().UTC()
	old := now.Add(-cluster.HistoryRetention - time.Hour)
	require.NoError(t, c.Record(ctx, api.History{Time: old, Identity: "bob", Action: "pause"}))
	got, err := c.History(ctx, 0)
	require.NoError(t, err)
	require.Len(t, got, 1)

	require.NoError(t, c.Record(ctx, api.History{Time: now.Add(-time.Minute), Identity: "alice", Action: "pause", Detail: "maintenance"}))
	require.NoError(t, c.Record(ctx, api.History{Time: now, Host: "root@jump", Action: "unpause"}))
	got, err = c.History(ctx, 0)
	require.NoError(t, err)
	require.Len(t, got, 2, "the record past the retention is gone")
	assert.Equal(t, "alice", got[0].Who())
	assert.Equal(t, "maintenance", got[0].Detail)
	assert.Equal(t, "root@jump", got[1].Who(), "no etcd identity: the OS user and host")

	newest, err := c.History(ctx, 1)
	require.NoError(t, err)
	require.Len(t, newest, 1)
	assert.Equal(t, "unpause", newest[0].Action, "a limit keeps the newest")

	// Another writer's key at the same instant is never overwritten.
	resp, err := cli.Get(ctx, c.HistoryPrefix(), clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		assert.Equal(t, int64(1), kv.Version, "%s was written once", kv.Key)
	}
}
