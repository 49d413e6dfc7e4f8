package api

import (
	"testing"

	"github.com/stretchr/testify/assert"
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
