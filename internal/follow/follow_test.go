package follow_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/follow"
	"github.com/ccm-dev/ccm/internal/leaktest"
)

// recorder records what the follower hands over.
type recorder struct {
	mu     sync.Mutex
	resets []string // reasons
	keys   []string // every key, listed or watched, in order
}

func (r *recorder) Reset(_ context.Context, kvs []*mvccpb.KeyValue, _ int64, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resets = append(r.resets, reason)
	for _, kv := range kvs {
		r.keys = append(r.keys, string(kv.Key))
	}
	return nil
}

func (r *recorder) Apply(_ context.Context, resp clientv3.WatchResponse) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range resp.Events {
		r.keys = append(r.keys, string(ev.Kv.Key))
	}
	return nil
}

func (r *recorder) seen() ([]string, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.resets...), append([]string(nil), r.keys...)
}

// Across a restart of etcd the follower resumes after the last event it
// handed over: nothing lost, nothing twice, no list again. Its progress
// requests tell it that the stream stopped answering.
func TestFollowerResumesAfterTheLastEventAcrossARestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts an etcd member, which takes the client's reconnect backoff: make test runs it")
	}
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := cli.Put(ctx, "/p/a", "1")
	require.NoError(t, err)
	r := &recorder{}
	f := follow.New(cli, r, follow.Options{Name: "test", Key: "/p/", Prefix: true, Liveness: 200 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	put := func(k string) {
		t.Helper()
		require.Eventually(t, func() bool {
			pctx, c := context.WithTimeout(ctx, time.Second)
			defer c()
			// Created only once: an attempt that timed out here may
			// still have been applied, and a second put is a second
			// event.
			_, err := cli.Txn(pctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, "x")).Commit()
			return err == nil
		}, 30*time.Second, 50*time.Millisecond)
	}
	put("/p/b")
	require.Eventually(t, func() bool { _, k := r.seen(); return len(k) == 2 }, 10*time.Second, 10*time.Millisecond)
	etcd.Stop(0)
	require.Eventually(t, func() bool { return !f.Synced() && f.Err() != "" }, 30*time.Second, 10*time.Millisecond, "the follower says why it is not synced")
	etcd.Restart(0)
	put("/p/c")
	require.Eventually(t, func() bool { _, k := r.seen(); return len(k) >= 3 && f.Synced() }, 30*time.Second, 10*time.Millisecond)
	resets, keys := r.seen()
	assert.Equal(t, []string{"start"}, resets)
	assert.Equal(t, []string{"/p/a", "/p/b", "/p/c"}, keys)
}

func TestMain(m *testing.M) { leaktest.Main(m) }
