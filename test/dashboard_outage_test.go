package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// While the dashboard cannot read etcd, the page shows no node as
// healthy: every node's state is unknown, the summary says so with the
// time of the last good read, and the badge is no longer "live". Once
// etcd answers again, the page is live again. The Labels column shows
// the operators' labels, never those an agent claims.
func TestDashboardShowsAnEtcdOutageAsUnknownNeverHealthy(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	k := api.NewKeys("")
	for _, name := range []string{"node1", "node2"} {
		s, err := cluster.New(cli, cluster.Options{Node: name}).NewSession(ctx, cluster.SessionOptions{
			TTL: time.Minute, Presence: &api.Presence{Labels: map[string]string{"claimed": "yes"}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		_, err = cli.Put(ctx, k.StatusKey(name), fmt.Sprintf(`{"node":%q,"result":"converged","revision":1,"converged_revision":1}`, name))
		require.NoError(t, err)
	}
	_, err := cli.Put(ctx, k.LabelsKey("node1"), `{"role":"web"}`)
	require.NoError(t, err)
	page := openDashboard(t, caller(t, etcd, t.TempDir()))

	page.waitFor(`document.body.dataset.connection === "live"`, "the event stream is open")
	page.waitFor(rows(`[data-state="idle"][data-behind="false"]`)+` === 2`, "two converged nodes")
	assert.Equal(t, "2 nodes: 2 converged, 0 behind, 0 failed, 0 down", page.text("#summary"))
	assert.Equal(t, "live", page.text("#connection"))
	assert.Equal(t, "role=web", page.text(`#nodes tbody tr[data-node="node1"] .labels`), "the operators' labels, not the claimed ones")

	etcd.Stop(0)
	page.waitFor(rows(`[data-state="unknown"]`)+` === 2`, "every node's state unknown")
	page.waitFor(`document.body.dataset.stale === "true" && document.querySelector('#summary').dataset.unknown === "2"`, "the summary counts them unknown")
	summary := page.text("#summary")
	assert.True(t, strings.HasPrefix(summary, "2 nodes: state unknown; last read at "), summary)
	assert.NotContains(t, summary, "converged")
	assert.True(t, strings.HasPrefix(page.text("#connection"), "stale since "), "no live badge while stale")
	page.waitFor(rows(`[data-state="idle"]`)+` === 0`, "no node shown idle")
	page.waitFor(`!document.querySelector('#etcd-error').hidden`, "the error shows")

	etcd.Restart(0)
	page.waitFor(`document.body.dataset.stale === "false"`, "a good read ends the stale view")
	page.waitFor(`document.querySelector('#connection').textContent === "live"`, "live again")
}
