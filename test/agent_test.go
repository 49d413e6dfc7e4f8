package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// threeAgents starts a 3-member cluster and three agents, each with its own
// configuration (node name baked into on_change), root and state, and waits
// for their start-up converge.
func threeAgents(t *testing.T, cfg agentConfig, marker string) (*etcdtest.Cluster, []*agentNode, string) {
	etcd := etcdtest.New(t, 3)
	log := filepath.Join(t.TempDir(), "on_change.log")
	var nodes []*agentNode
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("node%d", i)
		nodes = append(nodes, startAgent(t, etcd, name, siteConfig(t, name, log, marker, "0.05"), cfg))
	}
	for _, n := range nodes {
		n.reported(t, 1, api.ResultConverged)
	}
	return etcd, nodes, log
}

// putSites writes n site objects with value v through a client of the
// given members (all when none) and returns the revision. They are one
// transaction: every agent sees them in one event, and a slow commit
// between two of them cannot split a change into two runs.
func putSites(t *testing.T, etcd *etcdtest.Cluster, n int, v string, members ...int) int64 {
	t.Helper()
	cli := etcd.Client(t, members...)
	var puts []clientv3.Op
	for i := 0; i < n; i++ {
		puts = append(puts, clientv3.OpPut(fmt.Sprintf("/ccm/objects/sites/s%03d", i), fmt.Sprintf(`{"v":%q}`, v)))
	}
	resp, err := cli.Txn(context.Background()).Then(puts...).Commit()
	require.NoError(t, err)
	return resp.Header.Revision
}

// converged waits until every node reports a converged run at revision
// rev or later, then checks that it renders s000..s<n-1> with value v.
func converged(t *testing.T, nodes []*agentNode, rev int64, n int, v string) {
	t.Helper()
	for _, node := range nodes {
		node.reported(t, rev, api.ResultConverged)
		for i := 0; i < n; i++ {
			require.Equal(t, v+"\n", node.read(fmt.Sprintf("/sites/s%03d.conf", i)), "%s renders site %d", node.name, i)
		}
	}
}

// revision is etcd's current revision.
func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/ccm/none")
	require.NoError(t, err)
	return resp.Header.Revision
}

func TestBurstOfWritesGivesOneRunPerNode(t *testing.T) {
	const quiet = 3 * time.Second
	etcd, nodes, _ := threeAgents(t, agentConfig{debounce: quiet, maxWait: time.Minute}, "/nonexistent")
	before := map[string]int{}
	for _, n := range nodes {
		before[n.name] = n.runs()
	}
	// 100 separate writes from 10 writers, so the burst fits well inside
	// the quiet period even on a slow machine.
	cli := etcd.Client(t)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := []time.Time{start}
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 100; i += 10 {
				_, err := cli.Put(context.Background(), fmt.Sprintf("/ccm/objects/sites/s%03d", i), `{"v":"v1"}`)
				assert.NoError(t, err)
				mu.Lock()
				done = append(done, time.Now())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The quiet period restarts at each event: what must fit in it is the
	// longest pause between two writes, not the whole burst (a loaded
	// machine may stretch that past the quiet period).
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(done); i++ {
		gap = max(gap, done[i].Sub(done[i-1]))
	}
	t.Logf("100 writes in %s, at most %s apart", time.Since(start), gap)
	require.Less(t, gap, quiet/2, "the writes must come well within the quiet period of each other for the test to mean anything")

	converged(t, nodes, revision(t, cli), 100, "v1")
	for _, n := range nodes {
		eventually(t, 10*time.Second, func() bool { return n.runs() >= before[n.name]+1 }, "%s recorded its run", n.name)
	}
	// An absence, observed over a window: no second run within one more
	// quiet period.
	time.Sleep(quiet + 500*time.Millisecond)
	for _, n := range nodes {
		assert.Equal(t, before[n.name]+1, n.runs(), "%s: exactly one run for 100 writes", n.name)
	}
}

func TestRunsNeverOverlapAcrossNodes(t *testing.T) {
	etcd, nodes, log := threeAgents(t, agentConfig{}, "/nonexistent")
	for round := 1; round <= 3; round++ {
		rev := putSites(t, etcd, 3, fmt.Sprintf("round%d", round))
		converged(t, nodes, rev, 3, fmt.Sprintf("round%d", round))
	}
	var runs []interval
	eventually(t, 10*time.Second, func() bool { runs = intervals(t, log); return len(runs) == 9 },
		"one on_change per node per round")
	for i := 1; i < len(runs); i++ {
		assert.Greater(t, runs[i].start, runs[i-1].end,
			"on_change of %s started before %s's ended: runs overlapped", runs[i].node, runs[i-1].node)
	}
}

func TestFailingValidateHaltsTheRolloutUntilResume(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "broken")
	etcd, nodes, _ := threeAgents(t, agentConfig{}, marker)
	converged(t, nodes, putSites(t, etcd, 2, "good"), 2, "good")

	require.NoError(t, os.WriteFile(marker, nil, 0o644)) // every node's validate now fails
	bad := putSites(t, etcd, 2, "bad")
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	failed := failedNode(t, c, "the failure flag is set")
	for _, n := range nodes {
		want := api.ResultHalted
		if n.name == failed {
			want = api.ResultFailed
		}
		eventually(t, 30*time.Second, func() bool {
			s := nodeStatus(t, cli, n.name)
			return s != nil && s.Result == want
		}, "%s reports %s", n.name, want)
		assert.Equal(t, "good\n", n.read("/sites/s000.conf"), "%s: files unchanged", n.name)
		eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(n.ag.Metrics().Halted) == 1 }, "%s: halted metric", n.name)
	}

	require.NoError(t, os.Remove(marker))
	_, err := c.Resume(context.Background())
	require.NoError(t, err)
	converged(t, nodes, bad, 2, "bad")
}

func TestKilledLockHolderLetsTheNextNodeProceedAfterTheTTL(t *testing.T) {
	etcd := etcdtest.New(t, 3)
	rev := putSites(t, etcd, 1, "v")
	dir := t.TempDir()
	log, started := filepath.Join(dir, "log"), filepath.Join(dir, "started")

	// Node a: a real process whose on_change hangs, holding the lock.
	a := newNode(t, "a", hangingConfig(t, started), etcd.Endpoints())
	proc := a.start("agent", "--debounce", "0s", "--lock-ttl", "2s")
	eventually(t, 30*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "a is in on_change")
	t.Cleanup(func() { killPidFile(started) })

	b := startAgent(t, etcd, "b", siteConfig(t, "b", log, "/nonexistent", "0"), agentConfig{})
	waiting(t, etcd, "b")
	assert.Empty(t, b.read("/sites/s000.conf"), "b cannot run while a holds the lock")

	killed := time.Now()
	require.NoError(t, proc.Process.Signal(syscall.SIGKILL))
	_, _ = proc.Process.Wait()
	b.reported(t, rev, api.ResultConverged) // after a's lease expired
	assert.Equal(t, "v\n", b.read("/sites/s000.conf"))
	t.Logf("b converged %s after a was killed (lock TTL 2s)", time.Since(killed).Round(time.Millisecond))
}

func TestCompactionPastTheAgentTriggersAFullResync(t *testing.T) {
	etcd := etcdtest.New(t, 3)
	log := filepath.Join(t.TempDir(), "log")
	n := startAgent(t, etcd, "n", siteConfig(t, "n", log, "/nonexistent", "0"), agentConfig{endpoints: []int{2}})
	n.reported(t, 1, api.ResultConverged)

	etcd.Stop(2) // the agent's only member
	admin := etcd.Client(t, 0, 1)
	rev := putSites(t, etcd, 5, "while-away", 0, 1)
	_, err := admin.Compact(context.Background(), rev)
	require.NoError(t, err)
	etcd.Restart(2)

	converged(t, []*agentNode{n}, rev, 5, "while-away")
}

func TestRolloutSurvivesEtcdOutages(t *testing.T) {
	etcd, nodes, _ := threeAgents(t, agentConfig{}, "/nonexistent")

	etcd.Stop(0)
	converged(t, nodes, putSites(t, etcd, 2, "one-down", 1, 2), 2, "one-down")

	etcd.Stop(1)
	etcd.Stop(2)
	// An absence, observed over a window: no agent stops while etcd is
	// gone for longer than the lock TTL, so that the sessions expire.
	time.Sleep(3 * time.Second)
	for _, n := range nodes {
		select {
		case err := <-n.done:
			t.Fatalf("%s stopped while etcd was down: %v", n.name, err)
		default:
		}
		assert.Error(t, n.ag.Ready(), "%s reports not ready", n.name)
	}
	etcd.Restart(0, 1, 2)
	converged(t, nodes, putSites(t, etcd, 2, "all-back"), 2, "all-back")
}

func TestSIGTERMWhileWaitingForTheLockExitsPromptly(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	holder := holdLock(t, etcd, "holder")

	n := newNode(t, "waiter", "../examples/ccm", etcd.Endpoints())
	proc := n.start("agent", "--debounce", "0s")
	eventually(t, 20*time.Second, func() bool {
		v, err := holder.View(context.Background())
		return err == nil && len(v.Nodes) > 0 && v.Nodes[len(v.Nodes)-1].Presence != nil && v.Holder == "holder"
	}, "the agent is up")
	waiting(t, etcd, "waiter")

	start := time.Now()
	require.NoError(t, proc.Process.Signal(syscall.SIGTERM))
	state, err := proc.Process.Wait()
	require.NoError(t, err)
	assert.Equal(t, 0, state.ExitCode())
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Empty(t, tree(t, n.root), "it never held the lock")
}

// hangingConfig is a configuration whose on_change, the first time, writes
// its pid to started and hangs, holding the lock.
func hangingConfig(t *testing.T, started string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(fmt.Sprintf(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
on_change:
  - [sh, -c, 'if [ ! -e "$0" ]; then echo $$ > "$0"; exec sleep 120; fi', %q]
`, started)), 0o644))
	return dir
}

// start runs the ccm binary in the background as this node.
func (n *node) start(args ...string) *exec.Cmd {
	n.t.Helper()
	base := []string{
		"--endpoints", strings.Join(n.endpoints, ","), "--node", n.name, "--root", n.root,
		"--state-dir", n.state, "--config-dir", n.configDir, "--log-format", "json", "--log-level", "warn",
	}
	cmd := exec.Command(ccmBin, append(append(base, n.flags...), args...)...)
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stderr = os.Stderr
	require.NoError(n.t, cmd.Start())
	n.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	return cmd
}

// killPidFile kills the process group whose leader's pid is in file.
func killPidFile(file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		return
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

func TestReloadKeepsTheLoadedConfigurationWhenTheNewOneIsBroken(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "log")
	dir := siteConfig(t, "n", log, "/nonexistent", "0")
	n := startAgent(t, etcd, "n", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)

	broken := filepath.Join(dir, "broken.yaml")
	require.NoError(t, os.WriteFile(broken, []byte("depends_on: [ghost]\nfiles: [{path: /x, content: x}]\n"), 0o644))
	err := n.ag.Reload()
	assert.ErrorContains(t, err, `broken.yaml: depends_on "ghost": no such configuration`)
	converged(t, []*agentNode{n}, putSites(t, etcd, 1, "still-works"), 1, "still-works")

	require.NoError(t, os.WriteFile(broken, []byte("files: [{path: /motd, content: \"hello\\n\"}]\n"), 0o644))
	rev := revision(t, n.cli)
	require.NoError(t, n.ag.Reload())
	n.reported(t, rev, api.ResultConverged)
	assert.Equal(t, "hello\n", n.read("/motd"), "the reloaded configuration converged")
}
