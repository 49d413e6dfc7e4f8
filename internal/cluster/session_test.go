package cluster

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// An outage longer than the TTL leaves the agent's previous session alive
// in etcd (a new leader renews every lease) while the agent gave it up:
// its alive key is still there, on the old lease. The agent takes its own
// key over; another agent's presence is still refused.
func TestAnnounceTakesOverItsOwnPreviousSessionOnly(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	c := New(cli, Options{Node: "web1"})
	// The previous session, as etcd kept it: a live lease holding the
	// alive key, with no keepalive left on this side.
	previous := func(instance string) clientv3.LeaseID {
		lease, err := cli.Grant(ctx, 600)
		require.NoError(t, err)
		raw, _ := json.Marshal(api.Presence{Node: "web1", Lease: "old", Since: time.Now(), Instance: instance})
		_, err = cli.Put(ctx, c.AliveKey("web1"), string(raw), clientv3.WithLease(lease.ID))
		require.NoError(t, err)
		return lease.ID
	}

	old := previous("agent-a")
	s, err := c.NewSession(ctx, SessionOptions{TTL: 5 * time.Second, Presence: &api.Presence{Instance: "agent-a"}})
	require.NoError(t, err, "the same instance takes its key over")
	defer s.Close()
	p, err := c.Presence(ctx, "web1")
	require.NoError(t, err)
	assert.Equal(t, s.Lease(), p.Lease, "the key is on the new session")
	ttl, err := cli.TimeToLive(ctx, old)
	require.NoError(t, err)
	assert.Equal(t, int64(-1), ttl.TTL, "the previous session is revoked")
	s.Close()

	previous("agent-b")
	_, err = c.NewSession(ctx, SessionOptions{TTL: 5 * time.Second, Presence: &api.Presence{Instance: "agent-a"}})
	assert.ErrorIs(t, err, ErrNodeTaken, "another instance serves the node: refused")
	_, err = c.NewSession(ctx, SessionOptions{TTL: 5 * time.Second, Presence: &api.Presence{}})
	assert.ErrorIs(t, err, ErrNodeTaken, "no instance: refused")
}

// Close returns once the goroutine that follows the keep-alive has
// returned, and says whether the lease was revoked.
func TestSessionCloseWaitsForItsKeepAliveAndRevokes(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	s, err := New(cli, Options{Node: "web1"}).NewSession(ctx, SessionOptions{TTL: 5 * time.Second})
	require.NoError(t, err)
	require.NotNil(t, s.kaDone)
	require.NoError(t, s.Close())
	select {
	case <-s.kaDone:
	default:
		t.Fatal("Close returned while the keep-alive goroutine runs")
	}
	ttl, err := cli.TimeToLive(ctx, s.session.Lease())
	require.NoError(t, err)
	assert.Equal(t, int64(-1), ttl.TTL, "the lease is revoked")
	assert.NoError(t, s.Close(), "a lease already gone is no error")
}
