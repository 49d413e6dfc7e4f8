package cluster

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/ccm-dev/ccm/api"
)

// A failure record names the node whose key holds it, never what its
// value claims.
func TestAFailureRecordBlamesTheNodeWhoseKeyItIs(t *testing.T) {
	k := api.NewKeys("")
	f := api.DecodeFailures(k, []*mvccpb.KeyValue{
		{Key: []byte("/ccm/failure/web1"), Value: []byte(`{"node":"web2","error":"forged"}`), CreateRevision: 9},
		{Key: []byte("/ccm/failure"), Value: []byte(`{"node":"web3","error":"old"}`), CreateRevision: 4},
		{Key: []byte("/ccm/failures"), Value: []byte(`{"node":"web4"}`), CreateRevision: 2},
	})
	if assert.Len(t, f, 2) {
		assert.Equal(t, api.Failure{Node: "web3", Error: "old", Legacy: true}, f[0], "oldest first; the legacy flag says so")
		assert.Equal(t, "web1", f[1].Node)
		assert.Equal(t, "node web1", f[1].By())
		assert.Contains(t, f[0].By(), "the legacy flag (it says node web3;", "never named as web3's own")
	}
}

// A canary record approves only changes older than itself: no node can
// turn the canary off for later changes.
func TestACanaryRecordCannotApproveAFutureChange(t *testing.T) {
	k := api.NewKeys("")
	got := newestCanary(api.DecodeCanaries(k, []*mvccpb.KeyValue{
		{Key: []byte("/ccm/canary/web1"), Value: []byte(`{"node":"web9","revision":9223372036854775807}`), ModRevision: 50},
		{Key: []byte("/ccm/canary/web2"), Value: []byte(`{"revision":40}`), ModRevision: 41},
		{Key: []byte("/ccm/canary/web3"), Value: []byte(`{"revision":45}`), ModRevision: 45},
		{Key: []byte("/ccm/canary/web4/x"), Value: []byte(`{"revision":44}`), ModRevision: 49},
	}))
	assert.Equal(t, api.Canary{Node: "web2", Revision: 40}, got)
}

// A quarantine record names the node and the object of its key, never
// what its value claims; a key of another shape is no record.
func TestAQuarantineRecordIsTheKeysNodeAndObject(t *testing.T) {
	k := api.NewKeys("")
	got := api.DecodeQuarantines(k, []*mvccpb.KeyValue{
		{Key: []byte("/ccm/quarantine/web1/sites/shop"), Value: []byte(`{"node":"web2","type":"sites","id":"blog","revision":7,"error":"check failed"}`), ModRevision: 9},
		{Key: []byte("/ccm/quarantine/web1/sites/shop/x"), Value: []byte(`{"revision":7}`), ModRevision: 9},
		{Key: []byte("/ccm/quarantine/web3"), Value: []byte(`{"revision":7}`), ModRevision: 9},
		{Key: []byte("/ccm/quarantine/web2/sites/a"), Value: []byte(`garbage`), ModRevision: 9},
		{Key: []byte("/ccm/quarantine/web2/sites/next"), Value: []byte(`{"revision":12}`), ModRevision: 11},
	})
	if assert.Len(t, got, 3) {
		assert.Equal(t, "sites/a", got[0].Object())
		assert.False(t, got[0].Holds(7), "an unreadable record holds nothing back")
		assert.Equal(t, "sites/next", got[1].Object())
		assert.False(t, got[1].Holds(12), "a record cannot quarantine a revision from after its own write")
		assert.Equal(t, "web1", got[2].Node)
		assert.Equal(t, "sites/shop", got[2].Object())
		assert.True(t, got[2].Holds(7))
		assert.False(t, got[2].Holds(8), "a new revision lifts it")
	}
}
