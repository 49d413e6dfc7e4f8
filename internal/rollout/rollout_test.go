package rollout_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// fakeApplier stands in for the applier: it reports what run returns, and
// counts its calls and the kind it was asked for.
type fakeApplier struct {
	calls atomic.Int32
	kind  atomic.Value
	run   func(ctx context.Context) *applier.Report
}

func (f *fakeApplier) Run(ctx context.Context, kind runkind.Kind, _ *configs.Set, snap *objects.Snapshot, _ []string) *applier.Report {
	f.calls.Add(1)
	f.kind.Store(kind)
	r := f.run(ctx)
	r.Revision = snap.Revision
	return r
}

func converges(context.Context) *applier.Report {
	return &applier.Report{Outcomes: []applier.Outcome{{Config: "nginx", Result: applier.Changed, Updated: 2}}}
}

func fails(context.Context) *applier.Report {
	return &applier.Report{Outcomes: []applier.Outcome{{Config: "nginx", Result: applier.Failed, Error: "nginx -t: bad directive"}},
		Err: errors.New("configuration nginx: nginx -t: bad directive")}
}

// node is one node's Runner on a session of the real etcd.
type node struct {
	name    string
	cluster *cluster.Cluster
	session *cluster.Session
	runner  *rollout.Runner
	applier *fakeApplier
}

func newNode(t *testing.T, etcd *etcdtest.Cluster, name string, run func(context.Context) *applier.Report) *node {
	t.Helper()
	c := cluster.New(etcd.Client(t), cluster.Options{Node: name})
	s, err := c.NewSession(context.Background(), cluster.SessionOptions{TTL: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	f := &fakeApplier{run: run}
	return &node{name: name, cluster: c, session: s, applier: f,
		runner: rollout.New(rollout.Options{Cluster: c, Applier: f, Node: name})}
}

func (n *node) turn(kind runkind.Kind) rollout.Result {
	return n.runner.Run(context.Background(), n.session, rollout.Request{
		Set: &configs.Set{}, Names: []string{"nginx"}, Kind: kind, Reason: "test",
		Snapshot: func(context.Context, int64) (*objects.Snapshot, error) {
			return objects.NewBuilder(api.DefaultPrefix, 42, nil).Snapshot(), nil
		},
	})
}

// A converged run is recorded under the lock as the node's status, with
// the revision it rendered and the kind of run it asked for.
func TestAConvergedRunIsRecordedAsTheNodesStatus(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	a := newNode(t, etcd, "a", converges)
	res := a.turn(runkind.Full)
	require.NoError(t, res.Err)
	assert.Equal(t, rollout.Done, res.Next())
	assert.Equal(t, runkind.Full, a.applier.kind.Load())
	s, err := a.cluster.Status(context.Background(), "a")
	require.NoError(t, err)
	require.NotNil(t, s)
	assert.Equal(t, api.ResultConverged, s.Result)
	assert.Equal(t, int64(42), s.Converged)
	assert.Equal(t, "nginx", s.Configurations[0].Config)
	assert.Equal(t, int64(42), a.runner.Converged())
}

// A failed run raises the flag, naming the node and the configuration;
// the next node's turn is halted without running anything, and says by
// whom. Resume lets it run.
func TestAFailedRunHaltsTheNextNodeUntilResume(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	a, b := newNode(t, etcd, "a", fails), newNode(t, etcd, "b", converges)
	res := a.turn(runkind.Changed)
	require.ErrorContains(t, res.Err, "failure flag set")
	assert.Equal(t, rollout.Done, res.Next(), "the flag reaches the agent through its watch")
	f, err := a.cluster.Failure(context.Background())
	require.NoError(t, err)
	require.NotNil(t, f)
	assert.Equal(t, "a", f.Node)
	assert.Equal(t, "nginx", f.Configuration)
	assert.Equal(t, "nginx -t: bad directive", f.Error)

	res = b.turn(runkind.Changed)
	require.ErrorIs(t, res.Err, rollout.ErrHalted)
	assert.Equal(t, rollout.Requeue, res.Next())
	assert.Zero(t, b.applier.calls.Load(), "a halted node applies nothing")
	s, err := b.cluster.Status(context.Background(), "b")
	require.NoError(t, err)
	assert.Equal(t, api.ResultHalted, s.Result)
	assert.Contains(t, s.Error, "failure flag set by node a (configuration nginx)")

	_, err = b.cluster.Resume(context.Background())
	require.NoError(t, err)
	require.NoError(t, b.turn(runkind.Changed).Err)
	assert.Equal(t, int32(1), b.applier.calls.Load())
}

// A paused rollout applies nothing and asks for the same batch later.
func TestAPausedRolloutAppliesNothing(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	a := newNode(t, etcd, "a", converges)
	require.NoError(t, a.cluster.SetPause(context.Background(), api.Pause{By: "ops", Reason: "maintenance", Time: time.Now()}))
	res := a.turn(runkind.Changed)
	require.ErrorIs(t, res.Err, rollout.ErrPaused)
	assert.Equal(t, rollout.Requeue, res.Next())
	assert.Zero(t, a.applier.calls.Load())
}

// A node whose lease ends while it runs cannot record the run: the
// status write is fenced, the outcome is reported not recorded, and the
// whole batch runs again once etcd answers. Nothing is written as if the
// node still held the lock.
func TestARunThatLostItsLockIsNotRecorded(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	var a *node
	a = newNode(t, etcd, "a", func(ctx context.Context) *applier.Report {
		lease, err := hexLease(a.session.Lease())
		require.NoError(t, err)
		_, err = cli.Revoke(context.Background(), lease)
		require.NoError(t, err)
		<-ctx.Done() // the run's context ends with the lock
		return converges(ctx)
	})
	res := a.turn(runkind.Changed)
	assert.True(t, res.LockLost)
	require.ErrorIs(t, res.Err, rollout.ErrNotRecorded)
	assert.Equal(t, rollout.RetryAll, res.Next())
	s, err := a.cluster.Status(context.Background(), "a")
	require.NoError(t, err)
	assert.Nil(t, s, "no status written without the lock")
}

// hexLease parses the session's lease ID, as cluster.Session.Lease spells it.
func hexLease(hex string) (clientv3.LeaseID, error) {
	id, err := strconv.ParseInt(hex, 16, 64)
	return clientv3.LeaseID(id), err
}
