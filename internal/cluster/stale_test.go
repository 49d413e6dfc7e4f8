package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/api"
)

// A stale view shows no node as healthy: every state is unknown, the
// summary counts no node converged, and the lock holders are left out;
// the time of the last good read stays.
func TestAStaleViewShowsNoNodeAsHealthy(t *testing.T) {
	read := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	v := &View{ReadAt: read, Holder: "web1", Holders: []string{"web1"}, Waiting: []string{"web2"}}
	for _, n := range []*NodeView{
		{Name: "web1", Status: &api.Status{Result: api.ResultConverged}, Presence: &api.Presence{}},
		{Name: "web2", Status: &api.Status{Result: api.ResultConverged}, Presence: &api.Presence{}},
	} {
		n.describe("", false, 0, "")
		v.Nodes = append(v.Nodes, *n)
		v.Summary.count(n)
	}
	assert.Equal(t, "2 nodes: 2 converged, 0 behind, 0 failed, 0 down", v.Summary.String())

	s := v.AsStale()
	assert.True(t, s.Stale)
	assert.Equal(t, read, s.ReadAt)
	for _, n := range s.Nodes {
		assert.Equal(t, StateUnknown, n.State, n.Name)
	}
	assert.Equal(t, Summary{Nodes: 2, Unknown: 2}, s.Summary)
	assert.Equal(t, "2 nodes: 2 unknown", s.Summary.String())
	assert.Empty(t, s.Holders)
	assert.Empty(t, s.Waiting)
	assert.Equal(t, StateIdle, v.Nodes[0].State, "the view it was made from is unchanged")
}
