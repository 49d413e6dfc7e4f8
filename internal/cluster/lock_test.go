package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// eventually waits for cond, a reported state, for up to timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, timeout, 10*time.Millisecond, append([]any{msg}, args...)...)
}

// slow marks a test that waits out leases: it runs in parallel with the
// others, and not in the inner loop (go test -short).
func slow(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out leases: make test runs it")
	}
	t.Parallel()
}

// acquire opens a session for c's node (announcing it with labels when
// given) and waits for the lock on it. Cleanup closes the session.
func acquire(ctx context.Context, t *testing.T, c *cluster.Cluster, ttl time.Duration, labels map[string]string) (*cluster.Lock, error) {
	t.Helper()
	opts := cluster.SessionOptions{TTL: ttl}
	if labels != nil {
		opts.Presence = &api.Presence{Labels: labels}
	}
	s, err := c.NewSession(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s.Lock(ctx, nil)
}

func TestLockIsExclusiveAcrossMembers(t *testing.T) {
	slow(t)
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	a := cluster.New(etcd.Client(t, 0), cluster.Options{Node: "a"})
	b := cluster.New(etcd.Client(t, 2), cluster.Options{Node: "b"})

	la, err := acquire(ctx, t, a, 5*time.Second, map[string]string{"role": "web"})
	require.NoError(t, err)
	view, err := b.View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", view.Holder)
	assert.Equal(t, map[string]string{"role": "web"}, view.Nodes[0].Presence.Labels)

	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = acquire(short, t, b, 5*time.Second, nil)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "b waits while a holds the lock")

	require.NoError(t, la.Release())
	lb, err := acquire(ctx, t, b, 5*time.Second, nil)
	require.NoError(t, err)
	view, err = a.View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", view.Holder)
	require.NoError(t, lb.Release())
}

func TestWritesAreFencedOnceTheLeaseIsGone(t *testing.T) {
	slow(t)
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	admin := etcd.Client(t)
	a := cluster.New(etcd.Client(t, 1), cluster.Options{Node: "a"})
	b := cluster.New(etcd.Client(t, 2), cluster.Options{Node: "b"})

	// The client notices a revoked lease at its next keepalive, TTL/3.
	la, err := acquire(ctx, t, a, 3*time.Second, nil)
	require.NoError(t, err)
	runCtx, stop := la.Context(ctx)
	defer stop()

	// The lease expires (here: revoked) while a is still running.
	leases, err := admin.Leases(ctx)
	require.NoError(t, err)
	for _, l := range leases.Leases {
		_, err := admin.Revoke(ctx, l.ID)
		require.NoError(t, err)
	}
	select {
	case <-runCtx.Done():
		assert.True(t, errors.Is(context.Cause(runCtx), cluster.ErrLockLost))
	case <-time.After(10 * time.Second):
		t.Fatal("the run context was not cancelled when the session ended")
	}

	lb, err := acquire(ctx, t, b, 30*time.Second, nil)
	require.NoError(t, err)
	require.NoError(t, lb.WriteStatus(ctx, api.Status{Node: "b", Result: api.ResultConverged}))

	err = la.SetFailure(ctx, api.Failure{Node: "a", Error: "late"})
	assert.ErrorIs(t, err, cluster.ErrLockLost)
	err = la.WriteStatus(ctx, api.Status{Node: "a", Result: api.ResultFailed})
	assert.ErrorIs(t, err, cluster.ErrLockLost)
	f, err := b.Failure(ctx)
	require.NoError(t, err)
	assert.Nil(t, f, "the stale holder could not raise the flag")
	require.NoError(t, lb.Release())
}

func TestLockIsGrantedInQueueOrderAndStatusNamesHolderAndWaiters(t *testing.T) {
	slow(t)
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	nodes := []string{"a", "b", "c", "d"}
	clusters := map[string]*cluster.Cluster{}
	for i, n := range nodes {
		clusters[n] = cluster.New(etcd.Client(t, i%3), cluster.Options{Node: n})
	}
	first, err := acquire(ctx, t, clusters["a"], 10*time.Second, nil)
	require.NoError(t, err)
	got := make(chan string, 3)
	var locks = make(chan *cluster.Lock, 3)
	for _, n := range nodes[1:] {
		go func() {
			l, err := acquire(ctx, t, clusters[n], 10*time.Second, nil)
			if err == nil {
				got <- n
				locks <- l
			}
		}()
		// Queue in order: each waiter's key exists before the next starts.
		eventually(t, 10*time.Second, func() bool {
			v, err := clusters["a"].View(ctx)
			return err == nil && len(v.Waiting) > 0 && v.Waiting[len(v.Waiting)-1] == n
		}, "%s queued", n)
	}
	v, err := clusters["a"].View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", v.Holder, "the holder is named by node, even without a presence key")
	assert.Equal(t, []string{"b", "c", "d"}, v.Waiting)

	require.NoError(t, first.Release())
	for _, want := range nodes[1:] {
		select {
		case n := <-got:
			assert.Equal(t, want, n, "granted by creation revision")
			require.NoError(t, (<-locks).Release())
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never got the lock", want)
		}
	}
}

// The lock's fence makes no round trip: it refuses once the lock key is
// deleted (a watch saw it), and once the lease may have expired by the
// local clock, when etcd stopped answering keep-alives.
func TestFenceRefusesOnceTheKeyIsDeletedOrTheLeaseMayHaveExpired(t *testing.T) {
	slow(t)
	m := etcdtest.StartMembers(t, 1)
	m.WaitHealthy(30 * time.Second)
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: m.Endpoints(), DialTimeout: 2 * time.Second})
	require.NoError(t, err)
	defer cli.Close()
	c := cluster.New(cli, cluster.Options{Node: "a"})
	ctx := context.Background()

	l, err := acquire(ctx, t, c, 2*time.Second, nil)
	require.NoError(t, err)
	require.NoError(t, l.Fence())
	view, err := c.View(ctx)
	require.NoError(t, err)
	require.Equal(t, "a", view.Holder)
	_, err = cli.Delete(ctx, c.LockPrefix(), clientv3.WithPrefix()) // an operator breaks the lock
	require.NoError(t, err)
	eventually(t, 10*time.Second, func() bool { return l.Fence() != nil }, "the fence refuses once the key is gone")
	assert.ErrorIs(t, l.Fence(), cluster.ErrLockLost)
	assert.Contains(t, l.Fence().Error(), "was deleted")
	require.NoError(t, l.Release())

	const ttl = 3 * time.Second // the fence holds 2.4 s past each answered keep-alive
	l, err = acquire(ctx, t, c, ttl, nil)
	require.NoError(t, err)
	time.Sleep(ttl / 2) // keep-alives answered meanwhile: the fence holds past a third of the TTL
	require.NoError(t, l.Fence())
	m.Freeze(0)
	defer m.Thaw(0)
	frozen := time.Now()
	eventually(t, 10*time.Second, func() bool { return l.Fence() != nil }, "the fence refuses once the lease may have expired")
	assert.Less(t, time.Since(frozen), ttl, "before the TTL has passed since etcd stopped answering")
	assert.Contains(t, l.Fence().Error(), "the lease may have expired")
}

// During an upgrade, an agent of the layout before per-node lock keys
// queues <prefix>/lock/<lease>: upgraded agents still wait for it, so a
// mixed cluster never runs two nodes at once; ccm status names its node
// by the presence on the same lease. (The old agent counts the new keys
// too: it counts every key under <prefix>/lock/.)
func TestAnUpgradedNodeWaitsForALegacyLockKey(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	ctx := context.Background()
	cli := etcd.Client(t)
	b := cluster.New(cli, cluster.Options{Node: "b"})
	old, err := cli.Grant(ctx, 30)
	require.NoError(t, err)
	hex := fmt.Sprintf("%x", old.ID)
	_, err = cli.Put(ctx, b.AliveKey("old"), `{"node":"old","lease":"`+hex+`"}`, clientv3.WithLease(old.ID))
	require.NoError(t, err)
	_, err = cli.Put(ctx, b.LockPrefix()+hex, "old", clientv3.WithLease(old.ID))
	require.NoError(t, err)

	view, err := b.View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "old", view.Holder, "named by the presence on its lease")
	require.Len(t, view.Queue, 1)
	assert.True(t, view.Queue[0].Legacy)

	short, cancel := context.WithTimeout(ctx, time.Second)
	_, err = acquire(short, t, b, 5*time.Second, nil)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "b waits while the old agent holds the lock")

	_, err = cli.Revoke(ctx, old.ID) // the old agent releases (or is upgraded)
	require.NoError(t, err)
	lb, err := acquire(ctx, t, b, 5*time.Second, nil)
	require.NoError(t, err)
	require.NoError(t, lb.Release())
}

// A release wakes O(1) waiters, not every waiter: over a whole queue of
// n nodes in batches, etcd sends O(n) watch events, measured by the
// member's own counter of events sent (Debian's etcd, alone in its
// process, so no other test's events count).
func TestABatchReleaseWakesOneWaiterNotTheQueue(t *testing.T) {
	slow(t)
	m := etcdtest.StartMembers(t, 1)
	m.WaitHealthy(30 * time.Second)
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: m.Endpoints(), DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() }) // after the sessions' cleanups, which revoke on it
	eventsFor := func(n int) float64 {
		prefix := fmt.Sprintf("/q%d", n)
		admin := cluster.New(cli, cluster.Options{Prefix: prefix})
		require.NoError(t, admin.SetRollout(context.Background(), api.Rollout{Batch: 2}))
		var blockers []*cluster.Lock
		for i := range 2 {
			l, err := acquire(context.Background(), t, cluster.New(cli, cluster.Options{Prefix: prefix, Node: fmt.Sprintf("blocker%d", i)}), 30*time.Second, nil)
			require.NoError(t, err)
			blockers = append(blockers, l)
		}
		done := make(chan error, n)
		var holding, most atomic.Int32
		for i := range n {
			c := cluster.New(cli, cluster.Options{Prefix: prefix, Node: fmt.Sprintf("n%02d", i)})
			s, err := c.NewSession(context.Background(), cluster.SessionOptions{TTL: 30 * time.Second})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			go func() {
				l, err := s.Lock(context.Background(), nil)
				if err == nil {
					now := holding.Add(1)
					for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
					}
					time.Sleep(time.Millisecond)
					holding.Add(-1)
					err = l.Release()
				}
				done <- err
			}()
		}
		eventually(t, 30*time.Second, func() bool {
			v, err := admin.View(context.Background())
			return err == nil && len(v.Waiting) == n
		}, "%d nodes queue behind the two holders", n)
		before := eventsSent(t, m)
		for _, b := range blockers {
			require.NoError(t, b.Release())
		}
		for range n {
			require.NoError(t, <-done)
		}
		assert.LessOrEqual(t, most.Load(), int32(2), "never more holders than the batch")
		return eventsSent(t, m) - before
	}
	// 80: more keys before the last waiters than a queue read lists.
	few, many := eventsFor(10), eventsFor(80)
	t.Logf("watch events sent: %v for 10 nodes, %v for 80", few, many)
	assert.LessOrEqual(t, many, 5*80.0, "a few events per release, however long the queue")
	assert.Less(t, many, 20*few, "linear in the queue (8x the nodes), not quadratic (64x)")
}

// eventsSent reads the member's count of watch events it sent.
func eventsSent(t *testing.T, m *etcdtest.Members) float64 {
	t.Helper()
	_, events, _ := memberCounts(t, m)
	return events
}

// During an upgrade an old agent raises the one legacy flag,
// <prefix>/failure: an upgraded node's gate obeys it, names it as the
// legacy flag (never as the node its value claims), and ccm resume clears
// it with the records.
func TestAnUpgradedNodeObeysTheLegacyFailureFlag(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	ctx := context.Background()
	cli := etcd.Client(t)
	b := cluster.New(cli, cluster.Options{Node: "b"})
	_, err := cli.Put(ctx, b.LegacyFailureKey(), `{"node":"web2","configuration":"nginx","error":"old agent failed"}`)
	require.NoError(t, err)
	l, err := acquire(ctx, t, b, 5*time.Second, nil)
	require.NoError(t, err)
	gate := l.Gate()
	require.NotNil(t, gate.Failure, "the legacy flag halts an upgraded node")
	assert.True(t, gate.Failure.Legacy)
	assert.Contains(t, gate.Failure.By(), "the legacy flag")
	require.NoError(t, l.Release())
	cleared, err := b.Resume(ctx)
	require.NoError(t, err)
	assert.Len(t, cleared, 1)
	f, err := b.Failure(ctx)
	require.NoError(t, err)
	assert.Nil(t, f, "resume cleared the legacy flag")
}

// A join of the queue whose answer is lost (here: the caller's deadline
// passes after etcd applied it, before the answer came) leaves no key behind: the lock
// goes to the next node at once, not once the session ends. Before, the
// key held the lock, unknown to anyone, for as long as its session lived.
func TestAJoinWhoseAnswerWasLostLeavesNoKey(t *testing.T) {
	slow(t)
	etcd := etcdtest.New(t, 1)
	var lost atomic.Bool
	// The join's answer is lost by the interceptor, not by a clock: it
	// ends the caller's context once the join has committed, however long
	// the commit took on a loaded machine.
	joinCtx, cancelJoin := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelJoin()
	loseOne := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil && method == "/etcdserverpb.KV/Txn" && lost.CompareAndSwap(false, true) {
			cancelJoin()
			<-ctx.Done() // the answer arrives after the caller gave up
			return status.FromContextError(ctx.Err()).Err()
		}
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(loseOne)}})
	require.NoError(t, err)
	defer cli.Close()
	a := cluster.New(cli, cluster.Options{Node: "a"})
	s, err := a.NewSession(context.Background(), cluster.SessionOptions{TTL: 30 * time.Second})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Lock(joinCtx, nil)
	require.ErrorIs(t, err, context.Canceled, "the join's answer is lost")
	require.True(t, lost.Load())

	b := cluster.New(etcd.Client(t), cluster.Options{Node: "b"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lb, err := acquire(ctx, t, b, 5*time.Second, nil)
	require.NoError(t, err, "b gets the lock while a's session lives")
	require.NoError(t, lb.Release())
}
