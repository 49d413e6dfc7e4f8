package test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// nodeView returns a node as ccm status sees it.
func nodeView(t *testing.T, c *cluster.Cluster, name string) cluster.NodeView {
	t.Helper()
	v, err := c.View(context.Background())
	require.NoError(t, err)
	for _, n := range v.Nodes {
		if n.Name == name {
			return n
		}
	}
	return cluster.NodeView{Name: name, State: cluster.StateDown}
}

func TestARestartedLockHolderRevokesItsOwnDeadLease(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	putSites(t, etcd, 1, "v")
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	a := newNode(t, "a", hangingConfig(t, started), etcd.Endpoints())
	const ttl = "60s" // far longer than the test waits
	proc := a.start("agent", "--debounce", "0s", "--lock-ttl", ttl)
	eventually(t, 30*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "a holds the lock, in on_change")
	c := cluster.New(etcd.Client(t), cluster.Options{})
	assert.Equal(t, cluster.StateRunning, nodeView(t, c, "a").State, "status names the holder by node")
	require.NoError(t, proc.Process.Signal(syscall.SIGKILL))
	_, _ = proc.Process.Wait()
	killPidFile(started)

	a.start("agent", "--debounce", "0s", "--lock-ttl", ttl)
	eventually(t, 30*time.Second, func() bool {
		s, err := c.Status(context.Background(), "a")
		return err == nil && s != nil && s.Result == api.ResultConverged
	}, "the restarted agent converges without waiting out its old %s lease", ttl)
}

func TestApplyOnceLeavesTheAgentsPresenceAndTheAgentRestoresIt(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "0")
	ag := startAgent(t, etcd, "n", dir, agentConfig{})
	ag.reported(t, 1, api.ResultConverged)
	c := cluster.New(cli, cluster.Options{})

	n := newNode(t, "n", dir, etcd.Endpoints())
	require.Equal(t, 0, n.run("", "apply", "--once").code)
	assert.NotNil(t, nodeView(t, c, "n").Presence, "a one-shot run leaves the agent's alive key alone")

	_, err := cli.Delete(context.Background(), c.AliveKey("n"))
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "n").Presence != nil }, "the agent announces itself again")
}

func TestLockTimeoutBoundsOnlyTheWaitForTheLock(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	putSites(t, etcd, 1, "v")
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "4")
	n := newNode(t, "n", dir, etcd.Endpoints())
	r := n.run("", "apply", "--once", "--lock-timeout", "3s") // the join is a commit: room for a loaded machine
	require.Equal(t, 0, r.code, "a 4s on_change outlives a 3s --lock-timeout: %s", r.stderr)

	holdLock(t, etcd, "holder")
	r = n.run("", "apply", "--once", "--lock-timeout", "1s")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "lock not acquired in time (--lock-timeout 1s)")
}

func TestFullRunsDoNotWaitForTheDebounce(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "0")
	n := startAgent(t, etcd, "n", dir, agentConfig{debounce: time.Hour, maxWait: time.Hour})
	n.reported(t, 1, api.ResultConverged) // start
	rev := putSites(t, etcd, 1, "v")
	require.NoError(t, n.ag.Reload())
	n.reported(t, rev, api.ResultConverged) // reload: a full run, at once
}

func TestStatusTellsWhoIsBehind(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "0")
	n := startAgent(t, etcd, "n", dir, agentConfig{debounce: 3 * time.Second})
	first := n.reported(t, 1, api.ResultConverged)
	eventually(t, 10*time.Second, func() bool { v := nodeView(t, c, "n"); return v.State == cluster.StateIdle && !v.Behind }, "idle, up to date")
	assert.Equal(t, first.Revision, nodeView(t, c, "n").Converged)

	rev := putSites(t, etcd, 1, "v")
	eventually(t, 10*time.Second, func() bool { return nodeView(t, c, "n").Behind }, "behind while the change waits for the debounce")
	n.reported(t, rev, api.ResultConverged)
	v := nodeView(t, c, "n")
	assert.False(t, v.Behind, "up to date once converged")
	assert.GreaterOrEqual(t, v.Converged, rev)

	// An idle, synced node has no watch lag, whatever else was written.
	eventually(t, 30*time.Second, func() bool { return testutil.ToFloat64(n.ag.Metrics().WatchLag) == 0 }, "lag 0 when idle")

	r := newNode(t, "admin", dir, etcd.Endpoints()).run("", "status", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"converged_revision"`)
	assert.Contains(t, r.stdout, `"behind": false`)
	assert.Contains(t, r.stdout, `"state": "idle"`)
	assert.NotContains(t, r.stdout, `"Name"`, "JSON keys are lower case")
}

func TestPlanUsesTheLabelsTheAgentPublished(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.yaml"), []byte("when: {role: web}\nfiles: [{path: /web, content: w}]\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "all.yaml"), []byte("files: [{path: /all, content: a}]\n"), 0o644))
	n := newNode(t, "w1", dir, etcd.Endpoints())
	r := n.run("", "plan", "--color", "never")
	assert.Contains(t, r.stderr, "no agent alive for node w1")
	assert.NotContains(t, r.stdout, "/web")

	n.flags = []string{"--label", "role=web"}
	n.start("agent", "--debounce", "0s")
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 20*time.Second, func() bool {
		v := nodeView(t, c, "w1")
		return v.Presence != nil && v.Status != nil && v.Status.Result == api.ResultConverged
	}, "the agent is alive and has converged")
	n.flags = nil
	r = n.run("", "plan", "--color", "never")
	assert.Contains(t, r.stderr, "using the labels node w1's agent published: role=web")
	assert.NotContains(t, r.stderr, "no agent alive")
	assert.Contains(t, r.stdout, "2 configurations up to date", "the configuration for role=web is planned too (the agent converged both)")
}

func TestASecondAgentForTheSameNodeRefusesToStart(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "0")
	first := newNode(t, "web1", dir, etcd.Endpoints())
	first.start("agent", "--debounce", "0s")
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the first agent is alive")
	lease := nodeView(t, c, "web1").Presence.Lease

	elsewhere := newNode(t, "web1", dir, etcd.Endpoints()) // another host, same name
	r := elsewhere.run("", "agent", "--debounce", "0s")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "node already served by another live agent")

	sameHost := newNode(t, "web1", dir, etcd.Endpoints())
	sameHost.state = first.state
	r = sameHost.run("", "agent", "--debounce", "0s")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "is in use by another ccm agent")

	assert.Equal(t, lease, nodeView(t, c, "web1").Presence.Lease, "the first agent's session is untouched")
}

func TestAnEtcdOutageAtTheEndOfARunIsRecordedOnceEtcdReturns(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	cfg := t.TempDir()
	// validate fails, slowly: etcd goes away while it runs.
	require.NoError(t, os.WriteFile(filepath.Join(cfg, "sites.yaml"), []byte(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
validate: [sh, -c, 'touch "$0"; sleep 3; touch "$0.done"; exit 1', `+started+`]
`), 0o644))
	n := startAgent(t, etcd, "n", cfg, agentConfig{debounce: 100 * time.Millisecond, lockTTL: time.Second})
	putSites(t, etcd, 1, "v")
	eventually(t, 30*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "validate runs")
	etcd.Stop(0)
	eventually(t, 30*time.Second, func() bool { _, err := os.Stat(started + ".done"); return err == nil }, "validate fails while etcd is gone")
	eventually(t, 30*time.Second, func() bool { return n.ag.Ready() != nil }, "not ready while etcd is gone")
	etcd.Restart(0)

	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 30*time.Second, func() bool {
		f, err := c.Failure(context.Background())
		return err == nil && f != nil && f.Node == "n"
	}, "the failure is recorded once etcd answers: the flag is raised")
	eventually(t, 30*time.Second, func() bool { return nodeView(t, c, "n").Presence != nil }, "the node announces itself again")
	eventually(t, 30*time.Second, func() bool { return n.ag.Ready() == nil }, "and is ready")
	assert.Empty(t, n.read("/sites/s000.conf"), "the rejected file was restored away")
}
