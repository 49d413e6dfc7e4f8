package watcher_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/watcher"
)

// sink records what the watcher reports.
type sink struct {
	mu      sync.Mutex
	types   map[string]int
	reasons []string
	maxRev  int64
}

func (s *sink) Add(rev int64, types ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range types {
		s.types[t]++
	}
	s.maxRev = max(s.maxRev, rev)
}

func (s *sink) AddAll(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reasons = append(s.reasons, reason)
}

func (s *sink) snapshot() ([]string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reasons...), s.maxRev
}

func start(t *testing.T, w *watcher.Watcher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		assert.NoError(t, w.Run(ctx))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func TestWatcherMirrorsEveryWrite(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	_, err := cli.Put(ctx, "/ccm/objects/sites/pre", `{}`)
	require.NoError(t, err)

	m, s := objects.NewMirror("/ccm"), &sink{types: map[string]int{}}
	w := watcher.New(cli, m, s, watcher.Options{Prefix: "/ccm", Liveness: 200 * time.Millisecond, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))})
	start(t, w)
	require.Eventually(t, w.Synced, 10*time.Second, 10*time.Millisecond)

	for i := 0; i < 200; i++ {
		_, err := cli.Put(ctx, fmt.Sprintf("/ccm/objects/sites/s%03d", i), fmt.Sprintf(`{"i":%d}`, i))
		require.NoError(t, err)
	}
	resp, err := cli.Delete(ctx, "/ccm/objects/sites/pre")
	require.NoError(t, err)
	last := resp.Header.Revision
	status, err := cli.Put(ctx, "/ccm/nodes/x/status", `{}`) // outside objects/: no event
	require.NoError(t, err)

	require.NoError(t, m.WaitRevision(ctxTimeout(t), last))
	snap := m.Snapshot()
	assert.Len(t, snap.List("sites"), 200)
	assert.Equal(t, "s000", snap.List("sites")[0].ID)
	reasons, maxRev := s.snapshot()
	assert.Equal(t, []string{"start"}, reasons)
	assert.Equal(t, last, maxRev)

	// SyncTo confirms writes outside objects/ through a progress notification.
	require.NoError(t, w.SyncTo(ctxTimeout(t), status.Header.Revision))
	assert.Greater(t, m.Revision(), last)
}

func TestWatcherRelistsAfterCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts an etcd member, which takes the client's reconnect backoff: make test runs it")
	}
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	admin := etcd.Client(t, 0, 1)
	// The agent talks to member 2 only, which goes away for a while.
	m, s := objects.NewMirror("/ccm"), &sink{types: map[string]int{}}
	w := watcher.New(etcd.Client(t, 2), m, s, watcher.Options{Prefix: "/ccm", Liveness: 200 * time.Millisecond})
	start(t, w)
	require.Eventually(t, w.Synced, 10*time.Second, 10*time.Millisecond)
	seen := m.Revision()

	etcd.Stop(2)
	var last int64
	for i := 0; i < 20; i++ {
		resp, err := admin.Put(ctx, fmt.Sprintf("/ccm/objects/users/u%d", i), `{}`)
		require.NoError(t, err)
		last = resp.Header.Revision
	}
	_, err := admin.Compact(ctx, last)
	require.NoError(t, err)
	require.Greater(t, last, seen+1)
	etcd.Restart(2)

	require.NoError(t, m.WaitRevision(ctxTimeout(t), last))
	assert.Len(t, m.Snapshot().List("users"), 20)
	reasons, _ := s.snapshot()
	assert.Equal(t, []string{"start", "compacted"}, reasons, "a compaction past the mirror forces a re-list")
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Lag (ccm_watch_revision_lag) is what the mirror is behind the cluster:
// the writes a watcher that is not running yet has not seen, and 0 once it
// caught up.
func TestLagCountsTheRevisionsTheMirrorHasNotSeen(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	var last int64
	for i := range 5 {
		resp, err := cli.Put(ctx, fmt.Sprintf("/ccm/objects/sites/s%d", i), `{}`)
		require.NoError(t, err)
		last = resp.Header.Revision
	}
	m, s := objects.NewMirror("/ccm"), &sink{types: map[string]int{}}
	w := watcher.New(cli, m, s, watcher.Options{Prefix: "/ccm", Liveness: 200 * time.Millisecond})
	lctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	lag, err := w.Lag(lctx)
	cancel()
	require.NoError(t, err)
	assert.Equal(t, last, lag, "nothing mirrored yet: behind by every revision")

	start(t, w)
	require.Eventually(t, func() bool {
		lag, err := w.Lag(ctxTimeout(t))
		return err == nil && lag == 0
	}, 10*time.Second, 50*time.Millisecond, "caught up")
}
