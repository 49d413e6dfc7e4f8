package cluster

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The rules that decide whose a shared record is: a record counts only
// under the name of the node whose role may write it.
func TestOnlyANodesOwnKeysCountForIt(t *testing.T) {
	k := NewKeys("")
	for _, tc := range []struct {
		key    string
		lease  int64
		node   string
		legacy bool
		ok     bool
	}{
		{"/ccm/lock/web1/1f", 0x1f, "web1", false, true},
		{"/ccm/lock/web1/1f", 0, "", false, false},        // on no lease
		{"/ccm/lock/web1/1f", 0x2a, "", false, false},     // on another lease than it names
		{"/ccm/lock/0000-forged", 0x1f, "", false, false}, // no node, and not a lease
		{"/ccm/lock/0000-forged", 0, "", false, false},
		{"/ccm/lock/1f", 0x1f, "", true, true}, // an agent before per-node keys
		{"/ccm/lock/web1/x/1f", 0x1f, "", false, false},
		{"/ccm/lock//1f", 0x1f, "", false, false},
		{"/ccm/lockx/web1/1f", 0x1f, "", false, false},
	} {
		node, legacy, ok := k.LockOf(tc.key, tc.lease)
		assert.Equal(t, []any{tc.node, tc.legacy, tc.ok}, []any{node, legacy, ok}, "%s on %x", tc.key, tc.lease)
	}
	for key, want := range map[string][2]any{
		"/ccm/failure":           {"", true},
		"/ccm/failure/web2":      {"web2", true},
		"/ccm/failure/web2/x":    {"", false},
		"/ccm/failure/":          {"", false},
		"/ccm/failures":          {"", false},
		"/ccm/failure-of-web2":   {"", false},
		"/ccm/failure/web2\x00x": {"web2\x00x", true},
	} {
		node, ok := k.FailureOf(key)
		assert.Equal(t, want, [2]any{node, ok}, key)
	}
}

// A failure record names the node whose key holds it, never what its
// value claims.
func TestAFailureRecordBlamesTheNodeWhoseKeyItIs(t *testing.T) {
	k := NewKeys("")
	f := k.decodeFailures([]*mvccpb.KeyValue{
		{Key: []byte("/ccm/failure/web1"), Value: []byte(`{"node":"web2","error":"forged"}`), CreateRevision: 9},
		{Key: []byte("/ccm/failure"), Value: []byte(`{"node":"web3","error":"old"}`), CreateRevision: 4},
		{Key: []byte("/ccm/failures"), Value: []byte(`{"node":"web4"}`), CreateRevision: 2},
	})
	if assert.Len(t, f, 2) {
		assert.Equal(t, Failure{Node: "web3", Error: "old", Legacy: true}, f[0], "oldest first; the legacy flag says so")
		assert.Equal(t, "web1", f[1].Node)
		assert.Equal(t, "node web1", f[1].By())
		assert.Contains(t, f[0].By(), "the legacy flag (it says node web3;", "never named as web3's own")
	}
}

// A canary record approves only changes older than itself: no node can
// turn the canary off for later changes.
func TestACanaryRecordCannotApproveAFutureChange(t *testing.T) {
	k := NewKeys("")
	got := newestCanary(k.decodeCanaries([]*mvccpb.KeyValue{
		{Key: []byte("/ccm/canary/web1"), Value: []byte(`{"node":"web9","revision":9223372036854775807}`), ModRevision: 50},
		{Key: []byte("/ccm/canary/web2"), Value: []byte(`{"revision":40}`), ModRevision: 41},
		{Key: []byte("/ccm/canary/web3"), Value: []byte(`{"revision":45}`), ModRevision: 45},
		{Key: []byte("/ccm/canary/web4/x"), Value: []byte(`{"revision":44}`), ModRevision: 49},
	}))
	assert.Equal(t, Canary{Node: "web2", Revision: 40}, got)
}
