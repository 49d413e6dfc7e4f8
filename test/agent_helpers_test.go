package test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// siteConfig writes a configuration directory for one node: a file per
// site, a validate that fails while marker exists, and an on_change that
// logs its start and end, with the node's name, to log.
func siteConfig(t *testing.T, node, log, marker string, onChangeSleep string) string {
	t.Helper()
	dir := t.TempDir()
	yaml := fmt.Sprintf(`subscribes: [sites]
files:
  - path: /sites/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
validate: [test, "!", -e, %q]
on_change:
  - [sh, -c, 'echo "$0 start $(date +%%s%%N)" >> "$1"; sleep %s; echo "$0 end $(date +%%s%%N)" >> "$1"', %q, %q]
timeout: 120s
`, marker, onChangeSleep, node, log)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644))
	return dir
}

// agentNode is an agent running in this test process.
type agentNode struct {
	cli   *clientv3.Client
	name  string
	root  string
	state string
	ag    *agent.Agent
	stop  context.CancelFunc
	done  chan error
}

type agentConfig struct {
	debounce, maxWait, lockTTL time.Duration
	endpoints                  []int // members to talk to; all when empty
	// client, when set, is used instead of one to the embedded cluster
	// (which may then be nil): an external etcd.
	client *clientv3.Client
	labels map[string]string
	// releaseKeys is the agent's --release-keys file.
	releaseKeys string
}

func startAgent(t *testing.T, etcd *etcdtest.Cluster, name, configDir string, cfg agentConfig) *agentNode {
	t.Helper()
	if cfg.debounce == 0 {
		cfg.debounce = 300 * time.Millisecond
	}
	if cfg.lockTTL == 0 {
		cfg.lockTTL = 2 * time.Second
	}
	cli := cfg.client
	if cli == nil {
		var eps []string
		for _, i := range cfg.endpoints {
			eps = append(eps, etcd.Endpoint(i))
		}
		if len(eps) == 0 {
			eps = etcd.Endpoints()
		}
		var err error
		cli, err = cluster.NewClient(cluster.ClientConfig{Endpoints: eps, DialTimeout: 10 * time.Second})
		require.NoError(t, err)
	}
	n := &agentNode{cli: cli, name: name, root: t.TempDir(), state: stateDir(t), done: make(chan error, 1)}
	var err error
	n.ag, err = agent.New(agent.Options{
		Client: cli, Node: name, Labels: cfg.labels, ConfigDir: configDir, Root: n.root, StateDir: n.state,
		Debounce: cfg.debounce, MaxWait: cfg.maxWait, LockTTL: cfg.lockTTL,
		Liveness: 500 * time.Millisecond, ReleaseKeys: cfg.releaseKeys,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(name),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	go func() { n.done <- n.ag.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Errorf("agent %s did not stop; goroutines:\n%s", name, stacks.String())
		}
		cli.Close()
	})
	return n
}

// runs returns how many runs the agent made, by any result.
func (n *agentNode) runs() int {
	total := 0
	for _, r := range []string{api.ResultConverged, api.ResultFailed, api.ResultAborted, api.ResultHalted} {
		total += int(testutil.ToFloat64(n.ag.Metrics().Runs.WithLabelValues(r)))
	}
	return total
}

// status is the node's last reported run, or nil.
func (n *agentNode) status(t *testing.T) *api.Status {
	return nodeStatus(t, n.cli, n.name)
}

// reported waits until the node reports result for a run that rendered at
// least revision rev: a reported state, never a side effect midway
// through a run.
func (n *agentNode) reported(t *testing.T, rev int64, result string) *api.Status {
	t.Helper()
	var s *api.Status
	eventually(t, 30*time.Second, func() bool {
		s = n.status(t)
		return s != nil && s.Result == result && s.Revision >= rev
	}, "%s reports %s at revision %d or later (last: %+v)", n.name, result, rev, s)
	return s
}

// read returns a file under the agent's root, or "" if it does not exist.
func (n *agentNode) read(path string) string {
	b, _ := os.ReadFile(filepath.Join(n.root, path))
	return string(b)
}

// stateDir is a state directory as the agent requires it: 0700, since it
// holds the node's action key.
func stateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o700))
	return dir
}

// eventually waits for cond, failing with msg after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", timeout, fmt.Sprintf(msg, args...))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeStatus reads a node's status from etcd.
func nodeStatus(t *testing.T, cli *clientv3.Client, node string) *api.Status {
	t.Helper()
	v, err := cluster.New(cli, cluster.Options{}).View(context.Background())
	require.NoError(t, err)
	for _, n := range v.Nodes {
		if n.Name == node {
			return n.Status
		}
	}
	return nil
}

// interval is one on_change execution.
type interval struct {
	node       string
	start, end int64
}

// intervals parses the on_change log.
func intervals(t *testing.T, log string) []interval {
	t.Helper()
	f, err := os.Open(log)
	require.NoError(t, err)
	defer f.Close()
	open := map[string]int64{}
	var out []interval
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		require.Len(t, fields, 3, sc.Text())
		ts, err := strconv.ParseInt(fields[2], 10, 64)
		require.NoError(t, err)
		switch fields[1] {
		case "start":
			open[fields[0]] = ts
		case "end":
			out = append(out, interval{node: fields[0], start: open[fields[0]], end: ts})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out
}

// failedNode waits for the failure flag and returns the node that set it.
func failedNode(t *testing.T, c *cluster.Cluster, msg string) string {
	t.Helper()
	var failed string
	eventually(t, 30*time.Second, func() bool {
		f, err := c.Failure(context.Background())
		if err == nil && f != nil {
			failed = f.Node
		}
		return failed != ""
	}, "%s", msg)
	return failed
}

// waiting waits until node is queued for the lock, as ccm status shows it.
func waiting(t *testing.T, etcd *etcdtest.Cluster, node string) {
	t.Helper()
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 30*time.Second, func() bool {
		v, err := c.View(context.Background())
		return err == nil && slices.Contains(v.Waiting, node)
	}, "%s waits for the lock", node)
}

// holdLock takes the lock as node, through a session of its own that the
// test's cleanup closes, and returns the cluster it holds it on.
func holdLock(t *testing.T, etcd *etcdtest.Cluster, node string) *cluster.Cluster {
	t.Helper()
	c := cluster.New(etcd.Client(t), cluster.Options{Node: node})
	s, err := c.NewSession(context.Background(), cluster.SessionOptions{TTL: 30 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	lock, err := s.Lock(context.Background(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lock.Release() })
	return c
}
