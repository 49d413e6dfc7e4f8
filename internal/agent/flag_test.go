package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/metrics"
)

func TestAnOlderObservationOfTheFlagNeverUndoesANewerOne(t *testing.T) {
	cleared := 0
	f := newFlagState(metrics.New().Halted, func(string) bool { return true }, func() { cleared++ })
	f.observe(true, 10)  // the watch: the flag is raised
	f.observe(false, 12) // the watch: an operator resumed
	f.observe(true, 11)  // a run that read the flag before the resume
	assert.NoError(t, f.waitClear(context.Background()), "the flag stays clear")
	assert.Equal(t, 1, cleared, "one converge asked for, at the resume")
}

func TestTheFlagStaysUpWhileAnyNodesRecordRemains(t *testing.T) {
	f := newFlagState(metrics.New().Halted, func(key string) bool { return strings.HasPrefix(key, "/ccm/failure/") }, func() {})
	put := func(key string, rev int64) *clientv3.Event {
		return &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
	}
	del := func(key string, rev int64) *clientv3.Event {
		return &clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
	}
	apply := func(evs ...*clientv3.Event) {
		require.NoError(t, f.Apply(context.Background(), clientv3.WatchResponse{Events: evs}))
	}
	apply(put("/ccm/failure/web1", 5), put("/ccm/failure/web2", 6), put("/ccm/failures-note", 7))
	apply(del("/ccm/failure/web1", 8))
	assert.False(t, f.isClear(), "web2's record still holds the flag up")
	apply(del("/ccm/failures-note", 9))
	assert.False(t, f.isClear(), "a key that is no record changes nothing")
	apply(del("/ccm/failure/web2", 10))
	assert.True(t, f.isClear(), "the last record gone, the flag is clear")
}
