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

// A call's lease is granted while its nodes are read: the requests live
// on a lease of the retention period, the calls after it share that
// lease, and a call that writes nothing leaves no lease behind (the one
// granted for it is revoked).
func TestACallsLeaseIsSharedAndAFailedCallLeavesNone(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leases := func() []clientv3.LeaseStatus {
		resp, err := raw.Leases(ctx)
		require.NoError(t, err)
		return resp.Leases
	}

	failing := client.New(raw, client.Options{})
	_, err := failing.Send(ctx, client.Call{Action: "x", To: client.Targets{Labels: map[string]string{"role": "none"}}})
	require.ErrorIs(t, err, client.ErrNoTargets)
	_, err = failing.Start(ctx, client.Call{Action: "x", To: client.Targets{All: true}})
	require.ErrorIs(t, err, client.ErrNoTargets)
	assert.Empty(t, leases(), "a call that wrote nothing left its lease")

	c := client.New(raw, client.Options{})
	call := client.Call{Action: "x", To: client.Targets{Nodes: []string{"web1"}}, Timing: client.Timing{Retention: time.Hour}}
	first, err := c.Send(ctx, call) // web1 is not alive: its request waits for it
	require.NoError(t, err)
	require.Equal(t, []string{"web1"}, first.NotAlive)
	second, err := c.Send(ctx, call)
	require.NoError(t, err)

	held := leases()
	require.Len(t, held, 1, "the second call shares the first's lease")
	ttl, err := raw.TimeToLive(ctx, held[0].ID, clientv3.WithAttachedKeys())
	require.NoError(t, err)
	assert.Equal(t, int64(time.Hour.Seconds()), ttl.GrantedTTL)
	keys := api.NewKeys(api.DefaultPrefix)
	var attached []string
	for _, k := range ttl.Keys {
		attached = append(attached, string(k))
	}
	assert.Contains(t, attached, keys.ActionKey("web1", first.ID))
	assert.Contains(t, attached, keys.ActionKey("web1", second.ID))
}
