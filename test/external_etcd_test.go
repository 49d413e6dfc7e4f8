package test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// nodeOn returns a ccm node that talks to the external etcd over TLS as
// user (with password), presenting a certificate for cn.
func nodeOn(t *testing.T, e *etcdtest.External, name, user, password string) *node {
	cert, key := e.PKI.Issue(user)
	n := newNode(t, name, "../examples/ccm", []string{e.Endpoint})
	n.flags = []string{"--cacert", e.PKI.CACert, "--cert", cert, "--key", key, "--user", user}
	n.env = []string{"CCM_PASSWORD=" + password}
	return n
}

// grantNodeRole runs the etcdctl commands that `ccm rbac print --node`
// prints.
func grantNodeRole(t *testing.T, e *etcdtest.External, admin *node, name, password string) {
	grantRole(t, e, admin, password, "--node", name)
}

func TestAgentWorksWithOnlyItsNodeRoleOverTLS(t *testing.T) {
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantNodeRole(t, e, admin, "web1", "web1-secret")
	grantNodeRole(t, e, admin, "web2", "web2-secret")
	r := admin.run("", "object", "import", "../examples/objects.json")
	require.Equal(t, 0, r.code, r.stderr)

	web1 := nodeOn(t, e, "web1", "ccm-node-web1", "web1-secret")
	r = web1.run("", "apply", "--once")
	require.Equal(t, 0, r.code, r.stderr)
	assert.FileExists(t, filepath.Join(web1.root, "etc/nginx/sites-enabled/shop.conf"))

	// The agent, with the same rights, follows a change.
	proc := web1.start("agent", "--debounce", "0s", "--lock-ttl", "5s")
	r = admin.run(`{"user":"bob","domains":["tls.example"]}`, "object", "put", "sites", "tls")
	require.Equal(t, 0, r.code, r.stderr)
	out, err := e.Etcdctl("get", "/ccm/objects/sites/tls", "-w", "json")
	require.NoError(t, err, out)
	var got struct {
		Kvs []struct {
			ModRevision int64 `json:"mod_revision"`
		} `json:"kvs"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	require.Len(t, got.Kvs, 1)
	eventually(t, 30*time.Second, func() bool {
		r := admin.run("", "status", "--json")
		var v cluster.View
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || len(v.Nodes) == 0 || v.Nodes[0].Status == nil {
			return false
		}
		s := v.Nodes[0].Status
		return s.Result == api.ResultConverged && s.Revision >= got.Kvs[0].ModRevision
	}, "the agent reports that it converged the new site")
	assert.FileExists(t, filepath.Join(web1.root, "etc/nginx/sites-enabled/tls.conf"))
	require.NoError(t, proc.Process.Signal(syscall.SIGTERM))
	state, err := proc.Process.Wait()
	require.NoError(t, err)
	assert.Equal(t, 0, state.ExitCode())

	r = admin.run("", "status")
	require.Equal(t, 0, r.code, r.stderr)
	// Down once stopped. The last run converged, or, when the SIGTERM
	// met the run that the event of the new site queued (its start run
	// already converged the site), it was aborted before any
	// configuration.
	assert.Regexp(t, `web1\s+down\s+dir\s+\d+\s+no\s+(converged|aborted)`, r.stdout)
}

func TestANodeCannotWriteOutsideItsRole(t *testing.T) {
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantNodeRole(t, e, admin, "web1", "web1-secret")
	cert, key := e.PKI.Issue("ccm-node-web1")
	cli, err := cluster.NewClient(cluster.ClientConfig{
		Endpoints: []string{e.Endpoint}, CACert: e.PKI.CACert, Cert: cert, Key: key,
		User: "ccm-node-web1", Password: "web1-secret",
	})
	require.NoError(t, err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = cli.Put(ctx, "/ccm/nodes/web1/status", `{}`)
	require.NoError(t, err, "its own status")
	_, err = cli.Put(ctx, "/ccm/quarantine/web1/sites/shop", `{}`)
	require.NoError(t, err, "its own quarantine record")
	_, err = cli.Get(ctx, "/ccm/quarantine/", clientv3.WithPrefix())
	require.NoError(t, err, "it reads every node's quarantine records")
	for _, key := range []string{"/ccm/nodes/web2/status", "/ccm/objects/sites/evil", "/other", "/ccm/quarantine/web2/sites/shop", "/ccm/quarantine/web1x/sites/shop"} {
		_, err = cli.Put(ctx, key, `{}`)
		assert.ErrorContains(t, err, "permission denied", key)
	}
	_, err = cli.Get(ctx, "/ccm/nodes/web2/status")
	assert.ErrorContains(t, err, "permission denied", "it cannot read another node's keys either")

	wrong := nodeOn(t, e, "web1", "ccm-node-web1", "not-the-password")
	r := wrong.run("", "apply", "--once", "--lock-timeout", "10s")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "authentication failed")
}

// rootClient is a client of the external etcd with root's certificate.
func rootClient(t *testing.T, e *etcdtest.External) *clientv3.Client {
	t.Helper()
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{e.Endpoint}, CACert: e.PKI.CACert, Cert: e.RootCert, Key: e.RootKey, DialTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestAnEtcdRestoredFromASnapshotOrWipedIsConvergedAgain(t *testing.T) {
	e := etcdtest.StartExternal(t)
	admin := rootClient(t, e)
	ctx := context.Background()
	put := func(id, v string) {
		_, err := admin.Put(ctx, "/ccm/objects/sites/"+id, fmt.Sprintf(`{"v":%q}`, v))
		require.NoError(t, err)
	}
	dir := siteConfig(t, "n", filepath.Join(t.TempDir(), "log"), "/nonexistent", "0")
	n := startAgent(t, nil, "n", dir, agentConfig{client: rootClient(t, e)})
	// reportedAfter waits for a converged run that started after since.
	reportedAfter := func(since time.Time, what string) {
		t.Helper()
		eventually(t, 60*time.Second, func() bool {
			s, err := cluster.New(admin, cluster.Options{}).Status(ctx, "n")
			return err == nil && s != nil && s.Result == api.ResultConverged && s.Time.After(since)
		}, "converged %s", what)
	}

	put("a", "v1")
	reportedAfter(time.Now().Add(-time.Hour), "before the snapshot")
	snapshot := e.Snapshot()
	put("a", "v2")
	put("b", "v1")
	rev := revision(t, admin)
	n.reported(t, rev, api.ResultConverged)
	require.Equal(t, "v2\n", n.read("/sites/a.conf"))

	restored := time.Now()
	e.Restore(snapshot) // back to a=v1, no b
	reportedAfter(restored, "after the restore")
	assert.Equal(t, "v1\n", n.read("/sites/a.conf"), "the restored object is rendered")
	assert.Empty(t, n.read("/sites/b.conf"), "an object the snapshot lacks is removed")
	put("c", "v1")
	n.reported(t, revision(t, admin), api.ResultConverged)
	assert.Equal(t, "v1\n", n.read("/sites/c.conf"), "later events are followed")

	wiped := time.Now()
	e.Wipe()
	reportedAfter(wiped, "after the wipe")
	assert.Empty(t, n.read("/sites/a.conf"), "a wiped etcd has no objects")
}
