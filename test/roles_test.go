package test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/dashboard"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// The api, operator and viewer roles, created from exactly what ccm rbac
// print prints, on Debian's etcd with TLS and auth: each can do its job,
// and nothing more.
func TestThePrintedAPIOperatorAndViewerRoles(t *testing.T) {
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "", "root", "root-secret")
	grantRole(t, e, admin, "api-secret", "--api", "capi")
	grantRole(t, e, admin, "ops-secret", "--operator", "alice")
	grantRole(t, e, admin, "view-secret", "--viewer", "dash")
	grantRole(t, e, admin, "ci-secret", "--release", "ci")
	api := nodeOn(t, e, "", "ccm-api-capi", "api-secret")
	ops := nodeOn(t, e, "", "ccm-operator-alice", "ops-secret")
	viewer := nodeOn(t, e, "", "ccm-viewer-dash", "view-secret")
	ok := func(n *node, args ...string) result {
		t.Helper()
		r := n.run(`{"user":"bob","domains":["a.example"]}`, args...)
		require.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		return r
	}
	denied := func(n *node, args ...string) {
		t.Helper()
		r := n.run(`{"user":"bob","domains":["a.example"]}`, args...)
		assert.Equal(t, 1, r.code, "%v: %s", args, r.stdout)
		assert.Contains(t, r.stderr, "permission denied", args)
	}

	wrong := nodeOn(t, e, "", "ccm-api-capi", "not-the-password")
	r := wrong.run("", "status")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "authentication failed", "the password of the printed user is the one given")

	// The cluster API writes objects and reads the status, the flag and
	// the pause; it cannot clear the flag or pause.
	ok(api, "object", "put", "sites", "a")
	ok(api, "object", "get", "sites", "a")
	ok(api, "status")
	cli := externalClient(t, e, "ccm-api-capi", "api-secret")
	// Long: the same context serves a request after the ten commands
	// below, each a process with TLS and password authentication.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, key := range []string{"/ccm/failure", "/ccm/paused", "/ccm/rollout"} {
		_, err := cli.Get(ctx, key)
		assert.NoError(t, err, "the API reads %s", key)
	}
	denied(api, "pause", "--reason", "x")
	denied(api, "resume")
	denied(api, "rollout", "set", "--batch", "2")

	// The operator runs every operator command.
	ok(ops, "object", "put", "sites", "b")
	ok(ops, "pause", "--reason", "maintenance")
	ok(ops, "status")
	ok(ops, "unpause")
	ok(ops, "resume")
	ok(ops, "rollout", "set", "--batch", "2")
	ok(ops, "object", "delete", "sites", "b")
	opsCli := externalClient(t, e, "ccm-operator-alice", "ops-secret")
	_, err := opsCli.Put(ctx, "/other", "x")
	assert.ErrorContains(t, err, "permission denied", "nothing outside the prefix")

	// The release writer stores releases, and touches nothing else.
	releaser := nodeOn(t, e, "", "ccm-release-ci", "ci-secret")
	releaser.configDir = "../examples/ccm"
	ok(releaser, "release", "push", "../examples/ccm")
	ok(releaser, "release", "list")
	denied(releaser, "object", "put", "sites", "c")
	denied(releaser, "pause")
	denied(releaser, "status")

	// The viewer reads ccm status and the dashboard, and writes nothing.
	r = ok(viewer, "status")
	assert.Contains(t, r.stdout, "Rollout: batches of 2")
	denied(viewer, "object", "put", "sites", "c")
	denied(viewer, "pause")
	denied(viewer, "resume")
	denied(viewer, "release", "list") // nothing the viewer does needs a release's content
	addr := freeAddr(t)
	viewer.start("dashboard", "--listen", addr)
	var st dashboard.State
	eventually(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/state.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && json.Unmarshal(raw, &st) == nil && st.View != nil
	}, "the dashboard serves the cluster's state with the viewer role")
	assert.Empty(t, st.Error)
	assert.Equal(t, "batches of 2 nodes", st.Rollout)
	ok(ops, "rollout", "set", "--batch", "3")
	eventually(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/state.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return json.Unmarshal(raw, &st) == nil && st.Rollout == "batches of 3 nodes"
	}, "the dashboard follows the cluster under the viewer role, which does not read the releases")
}
