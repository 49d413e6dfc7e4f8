package agent_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// etcdCounts reads a member's counters that say what the agent asked of
// it: gRPC requests by method, WAL fsyncs and raft commits.
func etcdCounts(t *testing.T, endpoint string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(endpoint + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, "grpc_server_handled_total{") && strings.Contains(name, `grpc_code="OK"`):
			m := name[strings.Index(name, `grpc_method="`)+len(`grpc_method="`):]
			out[m[:strings.Index(m, `"`)]] += v
		case name == "etcd_disk_wal_fsync_duration_seconds_count":
			out["fsync"] = v
		case name == "etcd_server_proposals_committed_total":
			out["commits"] = v
		case name == "etcd_debugging_mvcc_events_total":
			out["watch events"] = v
		}
	}
	return out
}

// One object event costs the agent three etcd requests, of which two are
// writes (each a raft commit and an fsync): the lock's join with the
// gate's reads, the mirror's confirmation read, and the status with the
// release (the list is in docs/PERFORMANCE.md, request by request). It
// was nine, five of them writes. A guard that counts, never times: on
// Debian's etcd 3.4, which also makes the watcher confirm its mirror.
func TestOneEventCostsThreeEtcdRequestsOfWhichTwoWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Debian's etcd")
	}
	m := etcdtest.StartMembers(t, 1)
	m.WaitHealthy(30 * time.Second)
	var mu sync.Mutex
	var calls []string
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		mu.Lock()
		calls = append(calls, describe(method, req))
		mu.Unlock()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: m.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	dir := t.TempDir()
	config := filepath.Join(dir, "conf")
	require.NoError(t, os.MkdirAll(config, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(config, "sites.yaml"), []byte(sites), 0o644))
	root := filepath.Join(dir, "root")
	require.NoError(t, os.Mkdir(root, 0o755))
	ag, err := agent.New(agent.Options{Client: cli, Node: "n1", ConfigDir: config, Root: root, StateDir: filepath.Join(dir, "state"),
		Debounce: time.Millisecond, LockTTL: 30 * time.Second, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	put := func(i int) int64 {
		resp, err := cli.Put(context.Background(), fmt.Sprintf("/ccm/objects/sites/s%d", i%5), fmt.Sprintf(`{"v":"x%d"}`, i))
		require.NoError(t, err)
		return resp.Header.Revision
	}
	// Before the agent starts: its first run lists it, and no event of it
	// queues a second run into the measured window.
	put(0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	// Wait for the run by the agent's own counter: polling the status
	// would add reads to the count.
	runs := func() float64 { return testutil.ToFloat64(ag.Metrics().Runs.WithLabelValues(api.ResultConverged)) }
	waitConverged := func(want float64) {
		require.Eventually(t, func() bool { return runs() >= want }, 30*time.Second, time.Millisecond, "run %v", want)
	}
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(filepath.Join(root, "sites/s0.conf"))
		return string(b) == "x0\n"
	}, 30*time.Second, time.Millisecond)
	waitConverged(1)
	// The counter moves before the run's status and release are written:
	// the window opens once the lock is released.
	require.Eventually(t, func() bool {
		resp, err := cli.Get(context.Background(), "/ccm/lock/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	}, 30*time.Second, time.Millisecond, "the first run released the lock")
	base := runs()
	const events = 20
	before := etcdCounts(t, m.Endpoints()[0])
	mu.Lock()
	calls = nil
	mu.Unlock()
	for i := 1; i <= events; i++ {
		put(i)
		waitConverged(base + float64(i))
	}
	after := etcdCounts(t, m.Endpoints()[0])
	mu.Lock()
	byCall := map[string]int{}
	for _, c := range calls {
		byCall[c]++
	}
	mu.Unlock()
	for _, c := range slices.Sorted(maps.Keys(byCall)) {
		t.Logf("%5.2f per event: %s", float64(byCall[c])/events, c)
	}
	per := map[string]float64{}
	for k, v := range after {
		per[k] = (v - before[k]) / events
	}
	// Take off what the test itself asked: the put. The window holds
	// events releases of the lock, give or take the last one.
	per["Put"]--
	per["fsync"]--
	per["commits"]--
	var lines []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range per {
			if !yield(k) {
				return
			}
		}
	}) {
		if per[k] != 0 {
			lines = append(lines, fmt.Sprintf("%s %.2f", k, per[k]))
		}
	}
	t.Logf("etcd per event, the test's own put taken off: %s", strings.Join(lines, ", "))
	// A tenth of slack: the window holds one release more or less.
	assert.LessOrEqual(t, per["commits"], 2.1, "raft commits per event")
	assert.LessOrEqual(t, per["fsync"], 2.1, "WAL fsyncs per event")
	assert.LessOrEqual(t, per["Txn"]+per["Range"]+per["Put"]+per["DeleteRange"], 3.1, "etcd requests per event")
}

// describe names a request by its method and the keys it touches.
func describe(method string, req any) string {
	name := method[strings.LastIndex(method, "/")+1:]
	op := func(o *etcdserverpb.RequestOp) string {
		switch {
		case o.GetRequestRange() != nil:
			return "get " + string(o.GetRequestRange().Key)
		case o.GetRequestPut() != nil:
			return "put " + string(o.GetRequestPut().Key)
		case o.GetRequestDeleteRange() != nil:
			return "delete " + string(o.GetRequestDeleteRange().Key)
		}
		return "txn"
	}
	switch r := req.(type) {
	case *etcdserverpb.RangeRequest:
		return name + " " + string(r.Key)
	case *etcdserverpb.PutRequest:
		return name + " " + string(r.Key)
	case *etcdserverpb.TxnRequest:
		var ops []string
		for _, o := range r.Success {
			ops = append(ops, op(o))
		}
		return fmt.Sprintf("%s if %d then [%s]", name, len(r.Compare), strings.Join(ops, ", "))
	}
	return name
}
