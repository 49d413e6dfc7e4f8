package test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/test/etcdtest"
)

func TestLockIsExclusiveAcrossMembers(t *testing.T) {
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	a := cluster.New(etcd.Client(t, 0), cluster.Options{Node: "a"})
	b := cluster.New(etcd.Client(t, 2), cluster.Options{Node: "b"})

	la, err := a.Acquire(ctx, 5*time.Second, map[string]string{"role": "web"})
	require.NoError(t, err)
	view, err := b.View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", view.Holder)
	assert.Equal(t, map[string]string{"role": "web"}, view.Nodes[0].Presence.Labels)

	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = b.Acquire(short, 5*time.Second, nil)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "b waits while a holds the lock")

	require.NoError(t, la.Release())
	lb, err := b.Acquire(ctx, 5*time.Second, nil)
	require.NoError(t, err)
	view, err = a.View(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", view.Holder)
	require.NoError(t, lb.Release())
}

func TestWritesAreFencedOnceTheLeaseIsGone(t *testing.T) {
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	admin := etcd.Client(t)
	a := cluster.New(etcd.Client(t, 1), cluster.Options{Node: "a"})
	b := cluster.New(etcd.Client(t, 2), cluster.Options{Node: "b"})

	// The client notices a revoked lease at its next keepalive, TTL/3.
	la, err := a.Acquire(ctx, 3*time.Second, nil)
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

	lb, err := b.Acquire(ctx, 30*time.Second, nil)
	require.NoError(t, err)
	require.NoError(t, lb.WriteStatus(ctx, cluster.Status{Node: "b", Result: cluster.ResultConverged}))

	err = la.SetFailure(ctx, cluster.Failure{Node: "a", Error: "late"})
	assert.ErrorIs(t, err, cluster.ErrLockLost)
	err = la.WriteStatus(ctx, cluster.Status{Node: "a", Result: cluster.ResultFailed})
	assert.ErrorIs(t, err, cluster.ErrLockLost)
	f, err := b.Failure(ctx)
	require.NoError(t, err)
	assert.Nil(t, f, "the stale holder could not raise the flag")
	require.NoError(t, lb.Release())
}
