package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// A cluster API reads, lists, watches and deletes objects as agents see
// them: keys outside the grammar and values that are not JSON objects are
// left out; a watch from a list's revision misses nothing.
func TestObjectsGetListWatchAndDelete(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(raw, client.Options{})
	_, err := c.PutObjects(ctx, []client.Object{
		{Type: "sites", ID: "a", Data: map[string]any{"v": "1"}},
		{Type: "sites", ID: "b", Data: map[string]any{"v": "2"}},
		{Type: "pools", ID: "p", Data: map[string]any{}},
	})
	require.NoError(t, err)
	for key, val := range map[string]string{"/ccm/objects/sites/bad!": `{}`, "/ccm/objects/sites/c": `[1]`} {
		_, err = raw.Put(ctx, key, val)
		require.NoError(t, err)
	}

	o, err := c.GetObject(ctx, "sites", "a")
	require.NoError(t, err)
	require.NotNil(t, o)
	assert.Equal(t, map[string]any{"v": "1"}, o.Data)
	assert.Positive(t, o.Revision)
	missing, err := c.GetObject(ctx, "sites", "zz")
	require.NoError(t, err)
	assert.Nil(t, missing)
	_, err = c.GetObject(ctx, "sites", "c")
	assert.ErrorIs(t, err, client.ErrNotObject)

	sites, rev, err := c.ListObjects(ctx, "sites")
	require.NoError(t, err)
	var ids []string
	for _, o := range sites {
		ids = append(ids, o.ID)
	}
	assert.Equal(t, []string{"a", "b"}, ids, "the bad key and the value that is no object are left out")
	all, _, err := c.ListObjects(ctx, "")
	require.NoError(t, err)
	assert.Len(t, all, 3)

	events := c.WatchObjects(ctx, "sites", rev)
	require.NoError(t, c.PutObject(ctx, "pools", "q", map[string]any{})) // another type: not seen
	require.NoError(t, c.PutObject(ctx, "sites", "d", map[string]any{"v": "4"}))
	gone, err := c.DeleteObject(ctx, "sites", "a")
	require.NoError(t, err)
	assert.True(t, gone)
	gone, err = c.DeleteObject(ctx, "sites", "a")
	require.NoError(t, err)
	assert.False(t, gone, "already deleted")
	var got []client.ObjectEvent
	for ev, err := range events {
		require.NoError(t, err)
		got = append(got, ev)
		if len(got) == 2 {
			break
		}
	}
	assert.Equal(t, "d", got[0].ID)
	assert.Equal(t, map[string]any{"v": "4"}, got[0].Data)
	assert.False(t, got[0].Deleted)
	assert.Equal(t, "a", got[1].ID)
	assert.True(t, got[1].Deleted)
	assert.Greater(t, got[1].Revision, got[0].Revision)
}

// The read-only view decodes each record as ccm status does: a record's
// node is its key's, and a presence on no lease is no agent's.
func TestTheViewReadsTheClustersRecords(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k := api.NewKeys("")
	lease, err := raw.Grant(ctx, 60)
	require.NoError(t, err)
	for key, val := range map[string]string{
		k.FailureKey("web2"):                     `{"node":"web9","configuration":"sites","error":"boom"}`,
		k.PausedKey():                            `{"by":"alice","reason":"window"}`,
		k.StatusKey("web1"):                      `{"result":"converged","converged_revision":3}`,
		k.AliveKey("web2"):                       `{"node":"web2"}`, // on no lease
		k.QuarantineKey("web1", "sites", "shop"): `{"revision":1}`,
		k.LabelsKey("web1"):                      `{"role":"web"}`,
		k.ReplyKey("web3", "x"):                  `{}`, // a reply alone is no node
	} {
		_, err = raw.Put(ctx, key, val)
		require.NoError(t, err)
	}
	_, err = raw.Put(ctx, k.AliveKey("web1"), `{"node":"web7"}`, clientv3.WithLease(lease.ID))
	require.NoError(t, err)

	v, err := client.New(raw, client.Options{}).View(ctx)
	require.NoError(t, err)
	require.Len(t, v.Failures, 1)
	assert.Equal(t, "web2", v.Failures[0].Node, "the key's node")
	require.NotNil(t, v.Pause)
	assert.Equal(t, "alice", v.Pause.By)
	assert.Nil(t, v.Release)
	assert.Len(t, v.Quarantines, 1)
	assert.Len(t, v.Nodes, 2)
	web1 := v.Nodes["web1"]
	require.NotNil(t, web1.Presence)
	assert.Equal(t, "web1", web1.Presence.Node)
	assert.Equal(t, api.ResultConverged, web1.Status.Result)
	assert.Equal(t, map[string]string{"role": "web"}, web1.Labels)
	assert.Nil(t, v.Nodes["web2"].Presence, "no agent's presence")
}

// A call whose labels match no alive node is ErrNoTargets, and writes
// nothing.
func TestACallToNoNodeIsErrNoTargets(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.New(raw, client.Options{}).Start(ctx, client.Call{Action: "x", To: client.Targets{Labels: map[string]string{"role": "none"}}})
	require.ErrorIs(t, err, client.ErrNoTargets)
	resp, err := raw.Get(ctx, "/ccm/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count)
}
