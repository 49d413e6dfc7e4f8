package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// alone returns the endpoint of a member without a leader: the last one
// left of a 3-member cluster, as a member cut off from the majority is.
// It still takes connections and requests.
func alone(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts four members and waits out an election: make test runs it")
	}
	lone := etcdtest.New(t, 3)
	lone.Stop(1)
	lone.Stop(2)
	ep := lone.Endpoint(0)
	cli := lone.Client(t, 0)
	eventually(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := cli.Status(ctx, ep)
		return err == nil && st.Leader == 0
	}, "the last member of three reports no leader")
	return ep
}

// A client that reaches a member without a leader and one with a leader
// has every read and write served by the one with a leader: none waits on
// the other until its deadline (before, the balancer's round robin sent
// one request in two there, and each timed out).
func TestRequestsGoToAMemberWithALeader(t *testing.T) {
	lone := alone(t)
	healthy := etcdtest.New(t, 1)
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{lone, healthy.Endpoint(0)}})
	require.NoError(t, err)
	defer cli.Close()
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := cli.Put(ctx, "/ccm/k", fmt.Sprint(i))
		require.NoError(t, err, "put %d", i)
		_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("/ccm/t"), "=", 0)).Then(clientv3.OpPut("/ccm/t", "v")).Commit()
		require.NoError(t, err, "txn %d", i)
		_, err = cli.Get(ctx, "/ccm/k")
		require.NoError(t, err, "get %d", i)
		lease, err := cli.Grant(ctx, 30)
		require.NoError(t, err, "grant %d", i)
		_, err = cli.Revoke(ctx, lease.ID)
		require.NoError(t, err, "revoke %d", i)
		cancel()
	}
}

// A client that reaches only members without a leader is told so: a
// write fails with etcd's "no leader", not with a timeout after the
// member held it for seconds.
func TestNoMemberWithALeaderIsSaid(t *testing.T) {
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{alone(t)}})
	require.NoError(t, err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = cli.Put(ctx, "/ccm/k", "v")
	require.True(t, errors.Is(err, rpctypes.ErrNoLeader), "put: %v", err)
}
