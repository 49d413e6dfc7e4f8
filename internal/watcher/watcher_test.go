package watcher_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	// The sink hears of a change after the mirror has it: wait for it.
	require.Eventually(t, func() bool { _, maxRev := s.snapshot(); return maxRev >= last }, 10*time.Second, 10*time.Millisecond)
	reasons, maxRev := s.snapshot()
	assert.Equal(t, []string{"start"}, reasons)
	assert.Equal(t, last, maxRev)

	// SyncTo confirms writes outside objects/ through a progress notification.
	require.NoError(t, w.SyncTo(ctxTimeout(t), status.Header.Revision))
	assert.Greater(t, m.Revision(), last)
}

func TestWatcherRelistsAfterCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the client's reconnect backoff: make test runs it")
	}
	etcd := etcdtest.New(t, 3)
	ctx := context.Background()
	admin := etcd.Client(t, 0, 1)
	// The agent talks to member 2 only, through a link the test cuts for a
	// while. The member itself stays up and applies the compaction before
	// the link comes back: a restarted member could instead stream the
	// missed events before it applied the compaction, and the watcher would
	// rightly see no gap.
	link := newLink(t, etcd.Endpoint(2))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{link.addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	m, s := objects.NewMirror("/ccm"), &sink{types: map[string]int{}}
	w := watcher.New(cli, m, s, watcher.Options{Prefix: "/ccm", Liveness: 200 * time.Millisecond})
	start(t, w)
	require.Eventually(t, w.Synced, 10*time.Second, 10*time.Millisecond)
	seen := m.Revision()

	link.cut()
	var last int64
	for i := 0; i < 20; i++ {
		resp, err := admin.Put(ctx, fmt.Sprintf("/ccm/objects/users/u%d", i), `{}`)
		require.NoError(t, err)
		last = resp.Header.Revision
	}
	_, err = admin.Compact(ctx, last)
	require.NoError(t, err)
	require.Greater(t, last, seen+1)
	member2 := etcd.Client(t, 2)
	require.Eventually(t, func() bool {
		_, err := member2.Get(ctx, "/ccm/objects/users/u0", clientv3.WithRev(seen+1))
		return errors.Is(err, rpctypes.ErrCompacted)
	}, 10*time.Second, 10*time.Millisecond, "member 2 applied the compaction")
	link.open()

	require.NoError(t, m.WaitRevision(ctxTimeout(t), last))
	assert.Len(t, m.Snapshot().List("users"), 20)
	// The sink hears of a re-list after the mirror is reset (a test
	// that read it at once failed under load): wait for the second one.
	require.Eventually(t, func() bool { r, _ := s.snapshot(); return len(r) >= 2 }, 10*time.Second, 10*time.Millisecond, "a compaction past the mirror forces a re-list")
	reasons, _ := s.snapshot()
	assert.Equal(t, []string{"start", "compacted"}, reasons, "a compaction past the mirror forces a re-list")
}

// link is a TCP relay to one address that a test can cut: a cut closes
// every connection through it and refuses new ones until it is open again.
type link struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func newLink(t *testing.T, target string) *link {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	k := &link{l: l, target: target}
	t.Cleanup(func() { l.Close(); k.cut() })
	go k.serve()
	return k
}

func (k *link) addr() string { return k.l.Addr().String() }

func (k *link) serve() {
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", k.target)
		k.mu.Lock()
		if err != nil || k.closed {
			k.mu.Unlock()
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		k.conns = append(k.conns, c, up)
		k.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (k *link) cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func (k *link) open() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = false
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
