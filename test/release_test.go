package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// A directory is validated before it is stored; the same content is the
// same release; an edit is a new release whose diff is the edit.
func TestReleasePushListShowAndDiff(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	op := newNode(t, "", t.TempDir(), etcd.Endpoints())
	dir := copyDir(t, "../examples/ccm")

	r := op.run("", "release", "push", dir, "--message", "the example")
	require.Equal(t, 0, r.code, r.stderr)
	first := strings.TrimSpace(r.stdout)
	assert.Len(t, first, 64, "the id is the content's SHA-256")
	assert.Contains(t, r.stderr, "stored release "+first[:12])
	r = op.run("", "release", "push", dir)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, first, strings.TrimSpace(r.stdout))
	assert.Contains(t, r.stderr, "already stored")

	// A broken directory is refused, every error named, nothing stored.
	broken := copyDir(t, "../examples/ccm")
	require.NoError(t, os.WriteFile(filepath.Join(broken, "nginx-vhosts.yaml"), []byte("files: [{path: x}]\n"), 0o644))
	r = op.run("", "release", "push", broken)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "nginx-vhosts.yaml: files[0] x: path must be absolute")

	// A signed edit.
	key, _ := sshKey(t, "ops@example")
	vhost := filepath.Join(dir, "templates", "vhost.conf.tmpl")
	raw, err := os.ReadFile(vhost)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(vhost, []byte(strings.Replace(string(raw), "listen 80;", "listen 8080;", 1)), 0o644))
	r = op.run("", "release", "push", dir, "--sign-key", key, "--message", "port 8080")
	require.Equal(t, 0, r.code, r.stderr)
	second := strings.TrimSpace(r.stdout)
	assert.NotEqual(t, first, second)

	r = op.run("", "release", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, first[:12]+`\s+\S+\s+\d+\s+no\s+`, r.stdout)
	assert.Regexp(t, second[:12]+`\s+\S+\s+\d+\s+yes\s+ops@example\s+port 8080`, r.stdout)

	r = op.run("", "release", "show", second[:8])
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "release "+second+" (signed)\nauthor: ops@example\n")
	assert.Regexp(t, `0755\s+\d+\s+[0-9a-f]{16}\s+check/nginx-vhost`, r.stdout, "helpers keep their mode")

	r = op.run("", "release", "diff", first[:8], second[:8])
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stdout, "--- a/templates/vhost.conf.tmpl\n+++ b/templates/vhost.conf.tmpl\n")
	assert.Contains(t, r.stdout, "-    listen 80;\n+    listen 8080;\n")
	r = op.run("", "release", "diff", first[:8], first[:8])
	assert.Equal(t, 0, r.code)
	assert.Empty(t, r.stdout)
}

// Every node previews a release before it is promoted: its own plan under
// the release's configuration, with nothing applied.
func TestEveryNodePlansUnderAReleaseBeforeItRuns(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	c := cluster.New(etcd.Client(t), cluster.Options{})
	op := newNode(t, "", t.TempDir(), etcd.Endpoints())
	op.configDir = "../examples/ccm"
	require.Equal(t, 0, op.run("", "object", "import", "../examples/objects.json").code)
	var nodes []*node
	for _, name := range []string{"web1", "web2", "web3"} {
		n := newNode(t, name, "../examples/ccm", etcd.Endpoints())
		n.start("agent", "--debounce", "100ms", "--label", "role=web")
		nodes = append(nodes, n)
	}
	resp, err := etcd.Client(t).Get(context.Background(), "/ccm/objects/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	rev := resp.Header.Revision
	for _, n := range nodes {
		eventually(t, 60*time.Second, func() bool {
			s, err := c.Status(context.Background(), n.name)
			return err == nil && s != nil && s.Result == api.ResultConverged && s.Revision >= rev
		}, "%s converged", n.name)
	}
	vhost := "/etc/nginx/sites-enabled/shop.conf"
	before := nodes[0].read(vhost)

	dir := copyDir(t, "../examples/ccm")
	tmpl := filepath.Join(dir, "templates", "vhost.conf.tmpl")
	raw, err := os.ReadFile(tmpl)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(tmpl, []byte(strings.Replace(string(raw), "listen 80;", "listen 8080;", 1)), 0o644))
	r := op.run("", "release", "push", dir)
	require.Equal(t, 0, r.code, r.stderr)
	id := strings.TrimSpace(r.stdout)

	r = op.run("", "plan", "--cluster", "--release", id[:10])
	assert.Equal(t, 2, r.code, "%s%s", r.stdout, r.stderr)
	for _, n := range nodes {
		assert.Contains(t, r.stdout, "# node "+n.name+" (revision ")
	}
	assert.Equal(t, 3*2, strings.Count(r.stdout, "+    listen 8080;\n"), "both vhosts on each of the three nodes")
	r = nodes[1].run("", "plan", "--release", id[:10], "--label", "role=web")
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stdout, "-    listen 80;\n+    listen 8080;\n")
	r = op.run("", "plan", "--cluster")
	assert.Equal(t, 0, r.code, "without --release each node plans what it runs: %s", r.stdout)
	for _, n := range nodes {
		assert.Equal(t, before, n.read(vhost), "%s: nothing applied", n.name)
	}

	// Promoted while the rollout is paused: no node has run it, and each
	// plans what its next run converges, the promoted release.
	require.Equal(t, 0, op.run("", "pause", "--reason", "preview").code)
	r = op.run("", "release", "promote", id[:10])
	require.Equal(t, 0, r.code, r.stderr)
	r = op.run("", "plan", "--cluster")
	assert.Equal(t, 2, r.code, "%s%s", r.stdout, r.stderr)
	assert.Equal(t, 3*2, strings.Count(r.stdout, "+    listen 8080;\n"), "the promoted release, on each of the three nodes")
	for _, n := range nodes {
		assert.Equal(t, before, n.read(vhost), "%s: nothing applied while paused", n.name)
	}

	// A caller cannot point a plan at anything but a release.
	r = op.run("", "action", "run", "ccm.plan", "--node", "web1", "--param", "release=../objects/sites/shop")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, "want the full id, 64 hex digits")
	r = op.run("", "action", "run", "ccm.plan", "--node", "web1", "--param", "config=x")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, `the built-in action ccm.plan takes only release, not "config"`)
}
