package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

const sites = `subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
`

// node is one agent in this process, on a real etcd, with its root.
type node struct {
	ag      *agent.Agent
	root    string
	config  string
	admin   *clientv3.Client
	cluster *cluster.Cluster
}

func startAgent(t *testing.T, etcd *etcdtest.Cluster, name string) *node {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "conf")
	require.NoError(t, os.MkdirAll(config, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(config, "sites.yaml"), []byte(sites), 0o644))
	state := filepath.Join(dir, "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	n := &node{root: filepath.Join(dir, "root"), config: config, admin: etcd.Client(t)}
	require.NoError(t, os.Mkdir(n.root, 0o755))
	n.cluster = cluster.New(n.admin, cluster.Options{})
	var err error
	n.ag, err = agent.New(agent.Options{Client: etcd.Client(t), Node: name, ConfigDir: config, Root: n.root, StateDir: state, LockTTL: 2 * time.Second, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return n
}

func (n *node) put(t *testing.T, key, value string) int64 {
	t.Helper()
	resp, err := n.admin.Put(context.Background(), "/ccm/objects/"+key, value)
	require.NoError(t, err)
	return resp.Header.Revision
}

// reported waits for the node's status to say result for revision rev or
// a later one.
func (n *node) reported(t *testing.T, name string, rev int64, result string) *api.Status {
	t.Helper()
	var s *api.Status
	require.Eventually(t, func() bool {
		var err error
		s, err = n.cluster.Status(context.Background(), name)
		return err == nil && s != nil && s.Result == result && s.Revision >= rev
	}, 30*time.Second, 10*time.Millisecond, "%s reports %s for revision %d", name, result, rev)
	return s
}

func (n *node) read(path string) string {
	b, _ := os.ReadFile(filepath.Join(n.root, path))
	return string(b)
}

// The loop from a change to files: an object put renders its file, and
// an object deleted prunes it.
func TestTheAgentConvergesChangesAndPrunesDeletes(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	n := startAgent(t, etcd, "web1")
	n.put(t, "sites/a", `{"v": "a1"}`)
	rev := n.put(t, "sites/b", `{"v": "b1"}`)
	n.reported(t, "web1", rev, api.ResultConverged)
	assert.Equal(t, "a1\n", n.read("/sites/a.conf"))
	assert.Equal(t, "b1\n", n.read("/sites/b.conf"))

	resp, err := n.admin.Delete(context.Background(), "/ccm/objects/sites/b")
	require.NoError(t, err)
	n.reported(t, "web1", resp.Header.Revision, api.ResultConverged)
	assert.NoFileExists(t, filepath.Join(n.root, "/sites/b.conf"))
	assert.Equal(t, "a1\n", n.read("/sites/a.conf"))
}

// A change held back by the failure flag is not lost: the agent keeps it
// (whether it met the flag under the lock and reported halted, or saw the
// flag first and waits for it to clear), and converges it once the flag is
// cleared. That a halted run applies nothing is rollout's test.
func TestAChangeHeldBackByTheFlagConvergesAfterResume(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	n := startAgent(t, etcd, "web1")
	n.reported(t, "web1", 1, api.ResultConverged)
	_, err := n.admin.Put(context.Background(), api.NewKeys("").FailureKey("web9"), `{"configuration":"sites","error":"broke"}`)
	require.NoError(t, err)
	rev := n.put(t, "sites/a", `{"v": "held"}`)
	require.Eventually(t, func() bool {
		if testutil.ToFloat64(n.ag.Metrics().DebouncePending) >= 1 {
			return true // waits for the flag to clear, holding the change
		}
		s, err := n.cluster.Status(context.Background(), "web1")
		return err == nil && s != nil && s.Result == api.ResultHalted // met the flag under the lock
	}, 30*time.Second, 10*time.Millisecond, "the agent holds the change back")
	assert.Empty(t, n.read("/sites/a.conf"), "nothing applied while the flag is up")

	_, err = n.cluster.Resume(context.Background())
	require.NoError(t, err)
	n.reported(t, "web1", rev, api.ResultConverged)
	assert.Equal(t, "held\n", n.read("/sites/a.conf"))
}

// A reload of a broken directory is refused with the file at fault, and
// the agent goes on with the configuration it had loaded.
func TestABrokenReloadKeepsTheLoadedConfiguration(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	n := startAgent(t, etcd, "web1")
	n.reported(t, "web1", 1, api.ResultConverged)
	require.NoError(t, os.WriteFile(filepath.Join(n.config, "sites.yaml"), []byte("files: [{path: /x, content: '{{ .Nope'}]\n"), 0o644))
	err := n.ag.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "sites.yaml")
	rev := n.put(t, "sites/a", `{"v": "still"}`)
	n.reported(t, "web1", rev, api.ResultConverged)
	assert.Equal(t, "still\n", n.read("/sites/a.conf"), "the loaded configuration renders")

	// The failed reload is published, for ccm status and the dashboard,
	// until a reload succeeds.
	reloadError := func() string {
		p, err := n.cluster.Presence(context.Background(), "web1")
		if err != nil || p == nil {
			return "?"
		}
		return p.ReloadError
	}
	require.Eventually(t, func() bool { return strings.Contains(reloadError(), "sites.yaml") }, 30*time.Second, 10*time.Millisecond,
		"the presence says the reload failed")
	assert.Equal(t, 1.0, testutil.ToFloat64(n.ag.Metrics().ReloadFailed), "and so does ccm_reload_failed")
	assert.Equal(t, 1.0, testutil.ToFloat64(n.ag.Metrics().Release.WithLabelValues("dir")), "ccm_release_info: the directory")
	require.NoError(t, os.WriteFile(filepath.Join(n.config, "sites.yaml"), []byte(sites), 0o644))
	require.NoError(t, n.ag.Reload())
	require.Eventually(t, func() bool { return reloadError() == "" }, 30*time.Second, 10*time.Millisecond, "a good reload clears it")
	assert.Equal(t, 0.0, testutil.ToFloat64(n.ag.Metrics().ReloadFailed))
}

// A keys file that cannot be read is refused at start, naming its flag.
func TestAnUnreadableKeysFileNamesItsFlag(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	for _, flag := range []string{"--action-keys", "--release-keys"} {
		opts := agent.Options{Client: etcd.Client(t), Node: "web1", ConfigDir: t.TempDir(), Root: t.TempDir(), StateDir: t.TempDir()}
		missing := filepath.Join(t.TempDir(), "nope")
		if flag == "--action-keys" {
			opts.ActionKeys = missing
		} else {
			opts.ReleaseKeys = missing
		}
		_, err := agent.New(opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), flag+": open "+missing)
	}
}
