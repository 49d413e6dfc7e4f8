package watcher

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/objects"
)

// A progress notification that came ahead of its events (etcd 3.4 before
// 3.4.25) moves the mirror's revision past writes it has not applied. A
// snapshot for a run confirmed up to target claims target, or the last
// event applied when that is later, never the notification's revision:
// claimed, it reported converged a write the run never rendered (CI,
// TestEveryReportedRevisionHoldsItsWritesOnDebiansEtcd).
func TestASnapshotClaimsNoMoreThanWasConfirmed(t *testing.T) {
	ctx := context.Background()
	m := objects.NewMirror("/ccm")
	m.Reset(nil, 10)
	w := New(nil, m, nil, Options{Prefix: "/ccm"})
	w.early.Store(1)  // an endpoint runs etcd 3.4.23
	m.SetRevision(20) // early: the events up to 20 are still on their way

	snap, err := w.Snapshot(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, int64(10), snap.Revision, "confirmed up to 10, not 20")
	assert.Equal(t, int64(20), m.Snapshot().Revision, "the mirror's own revision moved")

	m.Apply([]objects.KV{{Key: "/ccm/objects/sites/a", Value: []byte(`{}`), ModRevision: 15}})
	snap, err = w.Snapshot(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, int64(15), snap.Revision, "every write up to the last event applied is held: a stream has no gaps")
	assert.Len(t, snap.List("sites"), 1)

	w.early.Store(2) // every endpoint's progress follows its events
	snap, err = w.Snapshot(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, int64(20), snap.Revision)
}

// The confirmation, against a real etcd: an object created and deleted
// after the mirror's last event leaves etcd at the target as the mirror
// is, so the snapshot claims the target. If the creation's event then
// arrives, the mirror holds that object, which etcd at the target does
// not: a snapshot claims the creation's revision, not the target. A
// target compacted away confirms nothing.
func TestTheConfirmationVouchesOnlyForTheStateItChecked(t *testing.T) {
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	put := func(key string) int64 {
		resp, err := cli.Put(ctx, key, `{}`)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	r0 := put("/ccm/objects/sites/a")
	r1 := put("/ccm/objects/sites/b")
	del, err := cli.Delete(ctx, "/ccm/objects/sites/b")
	require.NoError(t, err)
	r2 := del.Header.Revision
	target := put("/ccm/nodes/n1/lock") // outside objects/: the run's own write

	m := objects.NewMirror("/ccm")
	m.Reset([]objects.KV{{Key: "/ccm/objects/sites/a", Value: []byte(`{}`), ModRevision: r0}}, r0)
	m.SetRevision(target) // early: the events of b are still on their way
	w := New(cli, m, nil, Options{Prefix: "/ccm"})
	w.early.Store(1)

	held, err := w.confirm(ctx, target)
	require.NoError(t, err)
	assert.Equal(t, r0, held)
	assert.Equal(t, target, m.SnapshotConfirmed(target, held).Revision, "etcd at the target is what the mirror holds")

	m.Apply([]objects.KV{{Key: "/ccm/objects/sites/b", Value: []byte(`{}`), ModRevision: r1}})
	snap := m.SnapshotConfirmed(target, held)
	assert.Equal(t, r1, snap.Revision, "the mirror holds b, which etcd at the target does not")
	assert.Len(t, snap.List("sites"), 2)
	m.Apply([]objects.KV{{Key: "/ccm/objects/sites/b", ModRevision: r2, Deleted: true}})
	assert.Equal(t, r2, m.SnapshotConfirmed(target, held).Revision)

	later := put("/ccm/nodes/n1/status")
	_, err = cli.Compact(ctx, later, clientv3.WithCompactPhysical())
	require.NoError(t, err)
	m.Reset([]objects.KV{{Key: "/ccm/objects/sites/a", Value: []byte(`{}`), ModRevision: r0}}, r0)
	m.SetRevision(later)
	_, err = w.Snapshot(ctx, target)
	assert.ErrorIs(t, err, errCompacted)
}
