package test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// samples is how many observations a histogram has.
func samples(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, h.Write(&m))
	return m.GetHistogram().GetSampleCount()
}

// Every metric docs/OPERATIONS.md lists moves when what it counts happens: each is
// read after the state it follows was reported.
func TestEveryListedMetricMoves(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	marker := filepath.Join(t.TempDir(), "broken")
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), marker, "0")
	n := startAgent(t, etcd, "n", dir, agentConfig{debounce: 2 * time.Second})
	m := n.ag.Metrics()
	n.reported(t, 1, api.ResultConverged)
	eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(m.Ready) == 1 }, "ccm_ready is 1")
	runs := samples(t, m.RunDuration)
	assert.GreaterOrEqual(t, runs, uint64(1), "ccm_run_duration_seconds counts the first run")

	// A change waits out the debounce: ccm_debounce_pending shows it.
	rev := putSites(t, etcd, 2, "good")
	eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(m.DebouncePending) == 1 }, "ccm_debounce_pending is 1 during the debounce")
	n.reported(t, rev, api.ResultConverged)
	assert.Equal(t, float64(0), testutil.ToFloat64(m.DebouncePending), "and 0 after the run")
	assert.GreaterOrEqual(t, testutil.ToFloat64(m.Runs.WithLabelValues(api.ResultConverged)), float64(2))
	assert.GreaterOrEqual(t, testutil.ToFloat64(m.ChangedFiles), float64(2), "two files created")
	assert.Greater(t, samples(t, m.RunDuration), runs, "ccm_run_duration_seconds counts every run")
	assert.Greater(t, samples(t, m.LockWait), uint64(1), "ccm_lock_wait_seconds counts every wait")
	assert.InDelta(t, float64(time.Now().Unix()), testutil.ToFloat64(m.LastSuccess), 60)
	// The lag is measured against a progress request: an idle, synced
	// node settles at 0 (nothing here can hold the mirror back).
	eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(m.WatchLag) == 0 }, "ccm_watch_revision_lag settles at 0")

	// A failure, then a run halted by the flag.
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	rev = putSites(t, etcd, 2, "bad")
	n.reported(t, rev, api.ResultFailed)
	assert.Equal(t, float64(1), testutil.ToFloat64(m.Runs.WithLabelValues(api.ResultFailed)))
	assert.Equal(t, float64(1), testutil.ToFloat64(m.Failures), "ccm_configuration_failures_total")

	// A run halted by the flag: n queues behind another holder of the
	// lock, the flag goes up meanwhile, and n meets it under the lock.
	require.NoError(t, os.Remove(marker))
	ctx := context.Background()
	c := cluster.New(etcd.Client(t), cluster.Options{})
	_, err := c.Resume(ctx)
	require.NoError(t, err)
	n.reported(t, rev, api.ResultConverged)
	holder := cluster.New(etcd.Client(t), cluster.Options{Node: "holder"})
	s, err := holder.NewSession(ctx, cluster.SessionOptions{TTL: 5 * time.Second})
	require.NoError(t, err)
	defer s.Close()
	lock, err := s.Lock(ctx, nil)
	require.NoError(t, err)
	putSites(t, etcd, 2, "worse")
	eventually(t, 20*time.Second, func() bool {
		v, err := c.View(ctx)
		return err == nil && slices.Contains(v.Waiting, "n")
	}, "n waits for the lock")
	require.NoError(t, lock.SetFailure(ctx, api.Failure{Node: "holder", Configuration: "x", Error: "test", Time: time.Now()}))
	require.NoError(t, lock.Release())
	eventually(t, 30*time.Second, func() bool { s := n.status(t); return s != nil && s.Result == api.ResultHalted }, "n reports halted")
	assert.Equal(t, float64(1), testutil.ToFloat64(m.Halted), "ccm_halted")
	assert.Equal(t, float64(1), testutil.ToFloat64(m.Runs.WithLabelValues(api.ResultHalted)))
	_, err = c.Resume(ctx)
	require.NoError(t, err)

	// An object without the field its template needs is quarantined;
	// deleting it lifts the quarantine.
	assert.Equal(t, float64(0), testutil.ToFloat64(m.Quarantined))
	resp, err := etcd.Client(t).Put(ctx, "/ccm/objects/sites/nov", `{}`)
	require.NoError(t, err)
	n.reported(t, resp.Header.Revision, api.ResultConverged)
	assert.Equal(t, float64(1), testutil.ToFloat64(m.Quarantined), "ccm_quarantined_objects")
	del, err := etcd.Client(t).Delete(ctx, "/ccm/objects/sites/nov")
	require.NoError(t, err)
	n.reported(t, del.Header.Revision, api.ResultConverged)
	assert.Equal(t, float64(0), testutil.ToFloat64(m.Quarantined), "and 0 once lifted")

	// A pause.
	require.NoError(t, c.SetPause(ctx, api.Pause{By: "test", Reason: "metrics", Time: time.Now()}))
	eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(m.Paused) == 1 }, "ccm_paused is 1")
}
