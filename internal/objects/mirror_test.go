package objects_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/objects"
)

func kv(key, value string, rev int64) objects.KV {
	return objects.KV{Key: "/ccm/objects/" + key, Value: []byte(value), ModRevision: rev}
}

func TestMirrorAppliesEventsOnceAndInOrder(t *testing.T) {
	m := objects.NewMirror("/ccm")
	m.Reset([]objects.KV{kv("sites/b", `{"v":1}`, 2), kv("sites/a", `{"v":1}`, 3)}, 5)
	before := m.Snapshot()

	types := m.Apply([]objects.KV{
		kv("sites/a", `{"v":2}`, 6),
		kv("users/x", `{}`, 6),
		{Key: "/ccm/objects/sites/b", ModRevision: 7, Deleted: true},
	})
	m.SetRevision(7)
	assert.Equal(t, []string{"sites", "users"}, types)

	// A resumed watch delivers revision 6 again: it must not apply twice.
	assert.Empty(t, m.Apply([]objects.KV{kv("sites/a", `{"v":"stale"}`, 6)}))

	s := m.Snapshot()
	assert.Equal(t, int64(7), s.Revision)
	require.Len(t, s.List("sites"), 1)
	assert.Equal(t, 2.0, s.List("sites")[0].Data["v"])
	assert.Len(t, s.List("users"), 1)

	assert.Len(t, before.List("sites"), 2, "an earlier snapshot does not change")
	assert.Equal(t, "a", before.List("sites")[0].ID)
	assert.Equal(t, 1.0, before.List("sites")[0].Data["v"])
}

func TestMirrorKeepsBadObjectsAsErrorsUntilFixed(t *testing.T) {
	m := objects.NewMirror("/ccm")
	m.Apply([]objects.KV{kv("sites/a", `{`, 2), kv("sites/bad$", `{}`, 2)})
	s := m.Snapshot()
	assert.ErrorContains(t, s.Check("sites"), "object /ccm/objects/sites/a: value is not valid JSON")
	require.Len(t, s.Ignored, 1)

	m.Apply([]objects.KV{kv("sites/a", `{"ok":true}`, 3), {Key: "/ccm/objects/sites/bad$", ModRevision: 3, Deleted: true}})
	s = m.Snapshot()
	assert.NoError(t, s.Check("sites"))
	assert.Empty(t, s.Ignored)
	assert.Len(t, s.List("sites"), 1)
}

func TestMirrorWaitRevision(t *testing.T) {
	m := objects.NewMirror("/ccm")
	done := make(chan error)
	go func() { done <- m.WaitRevision(context.Background(), 10) }()
	m.SetRevision(9)
	select {
	case <-done:
		t.Fatal("returned before revision 10")
	case <-time.After(20 * time.Millisecond):
	}
	m.SetRevision(10)
	require.NoError(t, <-done)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, m.WaitRevision(ctx, 11), context.Canceled)
}

// etcd 3.4.23 can send a progress notification at the current revision
// while a watch that started in the past still owes events (seen with
// Debian's etcd-server). Such an event must still be applied.
func TestMirrorAppliesEventsDeliveredAfterAPrematureProgressNotification(t *testing.T) {
	m := objects.NewMirror("/ccm")
	m.Reset(nil, 7)
	m.SetRevision(10) // progress notification at 10, ahead of the events
	types := m.Apply([]objects.KV{kv("sites/tls", `{}`, 8)})
	assert.Equal(t, []string{"sites"}, types)
	assert.Len(t, m.Snapshot().List("sites"), 1)
	assert.Equal(t, int64(8), m.Applied(), "a resumed watch starts after the last applied event")
	assert.Equal(t, int64(10), m.Revision())
}

// The mirror keeps each type's list in order across events instead of
// sorting it per snapshot; a snapshot taken before an event must not see
// it.
func TestMirrorListsStayOrderedAndSnapshotsNeverChange(t *testing.T) {
	m := objects.NewMirror("/ccm")
	m.Reset(nil, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]int64{}
	var snaps []*objects.Snapshot
	var wants []map[string]int64
	for rev := int64(2); rev < 600; rev++ {
		id := fmt.Sprintf("s%02d", rng.IntN(40))
		switch rng.IntN(4) {
		case 0:
			m.Apply([]objects.KV{{Key: "/ccm/objects/sites/" + id, ModRevision: rev, Deleted: true}})
			delete(want, id)
		case 1:
			m.Apply([]objects.KV{kv("sites/"+id, `not json`, rev)})
			delete(want, id)
		default:
			m.Apply([]objects.KV{kv("sites/"+id, `{"v":1}`, rev)})
			want[id] = rev
		}
		if rng.IntN(3) == 0 {
			snaps = append(snaps, m.Snapshot())
			wants = append(wants, maps.Clone(want))
		}
	}
	for i, s := range snaps {
		got := map[string]int64{}
		ids := []string{}
		for _, o := range s.List("sites") {
			got[o.ID] = o.Revision
			ids = append(ids, o.ID)
		}
		require.Equal(t, wants[i], got, "snapshot %d", i)
		require.True(t, slices.IsSorted(ids), "snapshot %d is in ID order: %v", i, ids)
	}
}
