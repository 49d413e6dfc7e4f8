package test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// ccm status with a node's own credentials (the role ccm rbac print
// --node prints) shows that node and the cluster's flag, pause and
// release, and says the view is partial. An identity that may read none
// of it is told which role it needs, not only "permission denied".
func TestStatusWithANodesOwnCredentials(t *testing.T) {
	t.Parallel()
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantNodeRole(t, e, admin, "web1", "web1-secret")
	grantRole(t, e, admin, "ci-secret", "--release", "ci")
	for _, kv := range [][2]string{
		{"/ccm/nodes/web1/status", `{"node":"web1","result":"converged","revision":1,"converged_revision":1}`},
		{"/ccm/nodes/web2/status", `{"node":"web2","result":"converged","revision":1,"converged_revision":1}`},
		{"/ccm/labels/web1", `{"role":"web"}`},
	} {
		out, err := e.Etcdctl("put", kv[0], kv[1])
		require.NoError(t, err, out)
	}
	r := admin.run("", "pause", "--reason", "window")
	require.Equal(t, 0, r.code, r.stderr)

	web1 := nodeOn(t, e, "web1", "ccm-node-web1", "web1-secret")
	r = web1.run("", "status")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Paused: by root at")
	assert.Contains(t, r.stdout, "Partial view: only node web1")
	assert.Regexp(t, `(?m)^web1\s+down\s+dir\s+1\s+no\s+converged`, r.stdout)
	assert.NotContains(t, r.stdout, "web2", "another node's records are not its to read")
	r = web1.run("", "status", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var v cluster.View
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	require.Len(t, v.Nodes, 1)
	assert.Equal(t, map[string]string{"role": "web"}, v.Nodes[0].Labels)

	releaser := nodeOn(t, e, "", "ccm-release-ci", "ci-secret")
	r = releaser.run("", "status")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "permission denied")
	assert.Contains(t, r.stderr, "ccm rbac print --viewer NAME", "it names the role that would do")
}

// Each operator's change is recorded, in what it changed and in the
// history, by the etcd identity that made it: here the CN of the client
// certificate, with no etcd user given.
func TestOperatorsChangesAreRecordedByTheirEtcdIdentity(t *testing.T) {
	t.Parallel()
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantRole(t, e, admin, "unused", "--operator", "alice")
	cert, key := e.PKI.Issue("ccm-operator-alice")
	alice := newNode(t, "", "../examples/ccm", []string{e.Endpoint})
	alice.flags = []string{"--cacert", e.PKI.CACert, "--cert", cert, "--key", key}
	ok := func(args ...string) result {
		t.Helper()
		r := alice.run("", args...)
		if args[0] == "status" && r.code == 3 {
			r.code = 0 // the flag is up: web9's record
		}
		require.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		assert.NotContains(t, r.stderr, "warning", args)
		return r
	}
	for _, kv := range [][2]string{
		{"/ccm/nodes/web9/status", `{"node":"web9","result":"failed"}`},
		{"/ccm/failure/web9", `{"configuration":"sites","error":"boom"}`},
		{"/ccm/quarantine/web9/sites/shop", `{"revision":1,"error":"bad"}`},
	} {
		out, err := e.Etcdctl("put", kv[0], kv[1])
		require.NoError(t, err, out)
	}

	ok("pause", "--reason", "window")
	r := ok("status")
	assert.Contains(t, r.stdout, "Paused: by ccm-operator-alice at")
	ok("unpause")
	ok("resume")
	ok("quarantine", "clear", "sites/shop")
	ok("node", "label", "web9", "role=web")
	id := strings.TrimSpace(ok("release", "push", "../examples/ccm").stdout)
	require.NoError(t, api.CheckReleaseID(id))
	ok("release", "promote", id, "--message", "first")
	r = ok("release", "current")
	assert.Contains(t, r.stdout, "promoted by ccm-operator-alice at")
	r = ok("node", "retire", "web9")
	assert.Contains(t, r.stdout, "deleted /ccm/nodes/web9/status")
	assert.Contains(t, r.stdout, "deleted /ccm/labels/web9")

	r = ok("history", "--json")
	var hs []api.History
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &hs), r.stdout)
	var actions []string
	for _, h := range hs {
		actions = append(actions, h.Action)
		assert.Equal(t, "ccm-operator-alice", h.Identity, h.Action)
		assert.NotEmpty(t, h.Host, "the OS user and host too")
	}
	assert.Equal(t, []string{"pause", "unpause", "resume", "quarantine clear", "node label", "release promote", "node retire"}, actions)

	// A viewer reads the history; it cannot write one.
	grantRole(t, e, admin, "view-secret", "--viewer", "dash")
	viewer := nodeOn(t, e, "", "ccm-viewer-dash", "view-secret")
	r = viewer.run("", "history")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "node retire")
	viewerCli := externalClient(t, e, "ccm-viewer-dash", "view-secret")
	_, err := viewerCli.Put(t.Context(), "/ccm/history/00000000000000000001-x", "{}")
	assert.ErrorContains(t, err, "permission denied")
}
