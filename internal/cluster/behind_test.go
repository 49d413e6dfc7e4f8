package cluster

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// BEHIND for every node state: the newest object write in the cluster is
// at revision 23.
func TestBehindForEveryNodeState(t *testing.T) {
	alive := &api.Presence{Node: "n"}
	pending := &api.Presence{Node: "n", Pending: 20}
	st := func(result string, rev, converged int64) *api.Status {
		return &api.Status{Node: "n", Result: result, Revision: rev, Converged: converged}
	}
	tests := []struct {
		name     string
		lock     string
		paused   bool
		status   *api.Status
		presence *api.Presence
		state    string
		behind   bool
	}{
		{"idle, up to date", "", false, st(api.ResultConverged, 23, 23), alive, StateIdle, false},
		{"idle, a change that concerns it pending", "", false, st(api.ResultConverged, 15, 15), pending, StateIdle, true},
		{"idle, newer writes that do not concern it", "", false, st(api.ResultConverged, 15, 15), alive, StateIdle, false},
		{"waiting with a change", StateWaiting, false, st(api.ResultConverged, 15, 15), pending, StateWaiting, true},
		{"running with a change", StateRunning, false, st(api.ResultConverged, 15, 15), pending, StateRunning, true},
		{"paused with a change", "", true, st(api.ResultConverged, 15, 15), pending, StatePaused, true},
		{"paused, up to date", "", true, st(api.ResultConverged, 23, 23), alive, StatePaused, false},
		{"halted: it skipped a change", "", false, st(api.ResultHalted, 0, 15), alive, StateHalted, true},
		{"failed below the revision it tried", "", false, st(api.ResultFailed, 23, 15), alive, StateFailed, true},
		{"failed, then nothing new", "", false, st(api.ResultFailed, 15, 15), alive, StateFailed, false},
		{"down after missing a change", "", false, st(api.ResultConverged, 15, 15), nil, StateDown, true},
		{"down, up to date", "", false, st(api.ResultConverged, 23, 23), nil, StateDown, false},
		{"down, never ran", "", false, nil, nil, StateDown, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &NodeView{Name: "n", Status: tt.status, Presence: tt.presence}
			n.describe(tt.lock, tt.paused, 23, "")
			assert.Equal(t, tt.state, n.State)
			assert.Equal(t, tt.behind, n.Behind)
		})
	}
}

// The view reads the newest object write at its revision: a node that is
// down and missed a change shows behind.
func TestViewShowsADownNodeThatMissedAChangeBehind(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := New(cli, Options{})
	ctx := context.Background()
	put, err := cli.Put(ctx, c.ObjectsPrefix()+"sites/a", `{}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, c.StatusKey("web1"), fmt.Sprintf(`{"node":"web1","result":"converged","revision":%d,"converged_revision":%[1]d}`, put.Header.Revision))
	require.NoError(t, err)
	v, err := c.View(ctx)
	require.NoError(t, err)
	require.Len(t, v.Nodes, 1)
	assert.Equal(t, StateDown, v.Nodes[0].State)
	assert.False(t, v.Nodes[0].Behind, "down, but it has every change")
	assert.Equal(t, Summary{Nodes: 1, Converged: 1, Down: 1}, v.Summary)

	_, err = cli.Put(ctx, c.ObjectsPrefix()+"sites/b", `{}`)
	require.NoError(t, err)
	v, err = c.View(ctx)
	require.NoError(t, err)
	assert.True(t, v.Nodes[0].Behind, "down, and it missed sites/b")
	assert.Equal(t, Summary{Nodes: 1, Behind: 1, Down: 1}, v.Summary)
	assert.Equal(t, "1 nodes: 0 converged, 1 behind, 0 failed, 1 down", v.Summary.String())
}

// A node that runs another release than the promoted one is behind,
// whether its agent says so (alive) or its last run does (down), even
// when it has converged every object change.
func TestANodeOnAnotherReleaseIsBehind(t *testing.T) {
	upToDate := &api.Status{Node: "n", Result: api.ResultConverged, Revision: 23, Converged: 23, Release: "r1"}
	for _, tt := range []struct {
		name     string
		presence *api.Presence
		promoted string
		behind   bool
	}{
		{"alive on the promoted release", &api.Presence{Release: "r1"}, "r1", false},
		{"alive, the next release promoted", &api.Presence{Release: "r1"}, "r2", true},
		{"alive, back to --config-dir", &api.Presence{Release: "r1"}, "", true},
		{"down, its last run on the promoted release", nil, "r1", false},
		{"down, the next release promoted", nil, "r2", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &NodeView{Name: "n", Status: upToDate, Presence: tt.presence}
			n.describe("", false, 23, tt.promoted)
			assert.Equal(t, tt.behind, n.Behind)
		})
	}
}
