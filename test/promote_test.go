package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// release is a configuration directory as a release carries it, the same
// for every node: a file per site rendered as prefix+v, with the extra
// YAML lines given (a check, an on_change).
func release(t *testing.T, prefix, extra string) string {
	t.Helper()
	dir := t.TempDir()
	yaml := fmt.Sprintf(`subscribes: [sites]
files:
  - path: /sites/{{ .Object.ID }}.conf
    for_each: sites
    content: "%s{{ .Object.Data.v }}\n"
%stimeout: 60s
`, prefix, extra)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644))
	return dir
}

// logged is an on_change that logs, with the node's name, its start and
// end to log, and takes a second: runs that overlap show it.
func logged(log string) string {
	return fmt.Sprintf(`on_change:
  - [sh, -c, 'echo "$CCM_NODE start $(date +%%s%%N)" >> "$0"; sleep 1; echo "$CCM_NODE end $(date +%%s%%N)" >> "$0"', %q]
`, log)
}

// push stores dir as a release and returns its id.
func push(t *testing.T, admin *node, dir string, args ...string) string {
	t.Helper()
	r := admin.action(append([]string{"release", "push", dir}, args...)...)
	require.Equal(t, 0, r.code, r.stderr)
	return strings.TrimSpace(r.stdout)
}

// promote makes id the release every agent runs, and returns the
// revision of the promotion.
func promote(t *testing.T, etcd *etcdtest.Cluster, admin *node, id string, args ...string) int64 {
	t.Helper()
	r := admin.action(append([]string{"release", "promote", id[:8]}, args...)...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "promoted release "+id[:12])
	return promoted(t, etcd)
}

// promoted is the revision of the last move of the release pointer.
func promoted(t *testing.T, etcd *etcdtest.Cluster) int64 {
	t.Helper()
	resp, err := etcd.Client(t).Get(context.Background(), "/ccm/release")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	return resp.Kvs[0].ModRevision
}

// releaseAgents starts web1, web2 and web3 with nothing in --config-dir:
// they run what is promoted.
func releaseAgents(t *testing.T, etcd *etcdtest.Cluster, cfg agentConfig) []*agentNode {
	t.Helper()
	var nodes []*agentNode
	for _, name := range []string{"web1", "web2", "web3"} {
		nodes = append(nodes, startAgent(t, etcd, name, t.TempDir(), cfg))
	}
	return nodes
}

// releaseKeys writes a --release-keys file of one new key, and returns
// the private key and the file.
func releaseKeys(t *testing.T) (string, string) {
	t.Helper()
	key, pub := sshKey(t, "release@ci")
	keys := filepath.Join(t.TempDir(), "release_keys")
	require.NoError(t, os.WriteFile(keys, []byte(pub), 0o644))
	return key, keys
}

// signedRelease starts three agents with --release-keys, and promotes a
// release signed by the key on a site s000 = "a"; it returns the agents
// once they run it, and its id.
func signedRelease(t *testing.T, etcd *etcdtest.Cluster, admin *node) ([]*agentNode, string) {
	t.Helper()
	key, keys := releaseKeys(t)
	putSites(t, etcd, 1, "a")
	nodes := releaseAgents(t, etcd, agentConfig{releaseKeys: keys})
	good := push(t, admin, release(t, "good:", ""), "--sign-key", key)
	onRelease(t, nodes, good, promote(t, etcd, admin, good))
	return nodes, good
}

// onRelease waits until every node reports a converged run of release id
// at revision rev or later.
func onRelease(t *testing.T, nodes []*agentNode, id string, rev int64) {
	t.Helper()
	for _, n := range nodes {
		s := n.reported(t, rev, api.ResultConverged)
		require.Equal(t, id, s.Release, "%s runs the release", n.name)
	}
}

// Agents started with nothing in --config-dir wait for a release; a
// promoted template change then runs on one canary alone, and on the
// others in a batch once the canary converged it. A broken release fails
// on the canary and halts the rest; ccm release rollback (and ccm resume)
// brings every node back to the release before it.
func TestAPromotedReleaseRunsOnTheCanaryFirstAndRollbackUndoesABrokenOne(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	log := filepath.Join(t.TempDir(), "on_change.log")
	putSites(t, etcd, 2, "a")
	nodes := releaseAgents(t, etcd, agentConfig{})
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 30*time.Second, func() bool {
		v, err := c.View(context.Background())
		return err == nil && v.Summary.Nodes == 3
	}, "three agents announced")
	for _, n := range nodes {
		assert.Nil(t, n.status(t), "%s: nothing to converge before a release", n.name)
		assert.Empty(t, nodeView(t, c, n.name).ReloadError, "%s: waiting for a release is no failed reload", n.name)
	}

	v1 := push(t, admin, release(t, "v1:", logged(log)))
	rev := promote(t, etcd, admin, v1)
	onRelease(t, nodes, v1, rev)
	for _, n := range nodes {
		assert.Equal(t, "v1:a\n", n.read("/sites/s001.conf"))
	}
	r := admin.action("status")
	assert.Contains(t, r.stdout, "Release: "+v1[:12]+", promoted by ")
	assert.Regexp(t, `web2\s+idle\s+`+v1[:12]+`\s+\d+\s+no\s+converged`, r.stdout)

	r = admin.action("rollout", "set", "--batch", "2", "--canary")
	require.Equal(t, 0, r.code, r.stderr)
	v2 := push(t, admin, release(t, "v2:", logged(log)), "--message", "a template change")
	rev = promote(t, etcd, admin, v2)
	onRelease(t, nodes, v2, rev)
	var runs []interval
	eventually(t, 10*time.Second, func() bool { runs = intervals(t, log); return len(runs) == 6 }, "one on_change per node and release")
	canary, rest := runs[3], runs[4:]
	for _, r := range rest {
		assert.Greater(t, r.start, canary.end, "%s ran release 2 before the canary %s converged it", r.node, canary.node)
	}
	assert.Equal(t, 2, maxOverlap(rest), "then the other two side by side: %v", runs)

	// A release whose check fails: the canary fails, the others halt.
	v3 := push(t, admin, release(t, "v3:", "    check: [sh, -c, 'echo refused; exit 1']\n"+logged(log)))
	promote(t, etcd, admin, v3)
	failed := failedNode(t, c, "the canary fails the broken release and raises the flag")
	for _, n := range nodes {
		if n.name == failed {
			s := n.reported(t, 0, api.ResultFailed)
			assert.Contains(t, s.Error, "refused")
		} else {
			n.reported(t, 0, api.ResultHalted)
		}
		assert.Equal(t, "v2:a\n", n.read("/sites/s001.conf"), "%s keeps release 2's files", n.name)
	}

	r = admin.action("release", "rollback")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "promoted release "+v2[:12]+" (was "+v3[:12]+")")
	require.Equal(t, 0, admin.action("resume").code)
	onRelease(t, nodes, v2, promoted(t, etcd))
	for _, n := range nodes {
		assert.Equal(t, "v2:a\n", n.read("/sites/s001.conf"))
	}
	r = admin.action("release", "current")
	assert.Contains(t, r.stdout, "release "+v2+"\n")
	assert.Contains(t, r.stdout, "reason: rollback from "+v3[:12])
	assert.Contains(t, r.stdout, "before-1: "+v1[:12], "a second rollback goes back to release 1")
	r = admin.action("status")
	assert.Contains(t, r.stdout, "Failure flag: clear")
	assert.Contains(t, r.stdout, "3 nodes: 3 converged, 0 behind")
}

// An on_change added to a configuration whose files already match runs
// once on every node: the configuration's definition changed.
func TestAnOnChangeAddedByAReleaseRunsOncePerNode(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	log := filepath.Join(t.TempDir(), "on_change.log")
	putSites(t, etcd, 2, "a")
	nodes := releaseAgents(t, etcd, agentConfig{})
	v1 := push(t, admin, release(t, "x:", ""))
	onRelease(t, nodes, v1, promote(t, etcd, admin, v1))
	v2 := push(t, admin, release(t, "x:", logged(log)))
	onRelease(t, nodes, v2, promote(t, etcd, admin, v2))
	runs := intervals(t, log)
	require.Len(t, runs, 3, "once per node: %v", runs)
	seen := map[string]bool{}
	for _, r := range runs {
		seen[r.node] = true
	}
	assert.Len(t, seen, 3, "on every node")

	// Another full run of the same release runs nothing again.
	r := admin.action("action", "run", "ccm.converge", "--node", "web1")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	assert.Len(t, intervals(t, log), 3, "the change ran its commands once")
}

// With --release-keys, an unsigned release, or one signed by another key,
// is never loaded: each node says why (reload_error, ccm status) and keeps
// the release it runs. No node raises the flag: whoever may write
// releases can strip a signature, and that alone must not halt the
// cluster (the attack review of issue 35). A rollback ends it.
func TestAnUnsignedReleaseIsRefusedWhereKeysAreConfigured(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	other, _ := sshKey(t, "intruder")
	nodes, good := signedRelease(t, etcd, admin)

	c := cluster.New(etcd.Client(t), cluster.Options{})
	for _, tc := range []struct{ name, args, want string }{
		{"unsigned", "", "is not signed, and release keys are configured"},
		{"signed by another key", other, "which is not a release key"},
	} {
		args := []string{}
		if tc.args != "" {
			args = []string{"--sign-key", tc.args}
		}
		bad := push(t, admin, release(t, "evil-"+strings.ReplaceAll(tc.name, " ", "-")+":", ""), args...)
		promote(t, etcd, admin, bad)
		eventually(t, 30*time.Second, func() bool {
			v, err := c.View(context.Background())
			if err != nil {
				return false
			}
			refused := 0
			for _, n := range v.Nodes {
				if strings.Contains(n.ReloadError, tc.want) {
					refused++
				}
			}
			return refused == len(nodes)
		}, "%s: every node says why it does not load it", tc.name)
		f, err := c.Failure(context.Background())
		require.NoError(t, err)
		assert.Nil(t, f, "%s: no node's failure", tc.name)
		for _, n := range nodes {
			assert.Equal(t, 1.0, testutil.ToFloat64(n.ag.Metrics().Release.WithLabelValues(good[:12])), "%s: ccm_release_info", n.name)
			assert.Equal(t, 1.0, testutil.ToFloat64(n.ag.Metrics().ReloadFailed), "%s: ccm_reload_failed", n.name)
		}
		r := admin.action("status")
		assert.Regexp(t, nodes[0].name+`\s.*`+good[:12]+`.*reload failed: release `+bad[:12], r.stdout)
		for _, n := range nodes {
			assert.Equal(t, "good:a\n", n.read("/sites/s000.conf"), "%s: %s never loaded", n.name, tc.name)
			entries, _ := os.ReadDir(filepath.Join(n.state, "releases"))
			for _, e := range entries {
				assert.NotEqual(t, bad, e.Name(), "%s: never staged", n.name)
			}
		}
		r = admin.action("release", "rollback")
		require.Equal(t, 0, r.code, r.stderr)
		onRelease(t, nodes, good, promoted(t, etcd))
	}
}

// A release whose schemas refuse objects that exist is refused at
// promote, naming each; once a release is promoted, ccm object put
// checks against its schemas, not the caller's --config-dir.
func TestAReleaseWhoseSchemasBreakObjectsIsRefusedAtPromote(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir()) // no schemas of its own
	putSites(t, etcd, 2, "a")
	cli := etcd.Client(t)
	_, err := cli.Put(context.Background(), "/ccm/objects/sites/h2", `{"v": "b", "http2": true}`)
	require.NoError(t, err)

	strict := release(t, "x:", "")
	require.NoError(t, os.MkdirAll(filepath.Join(strict, "schemas"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(strict, "schemas", "sites.json"),
		[]byte(`{"type": "object", "required": ["v"], "properties": {"v": {"type": "string"}}, "additionalProperties": false}`), 0o644))
	id := push(t, admin, strict)
	r := admin.action("release", "promote", id[:8])
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "not promoted: 1 objects break its schemas")
	assert.Contains(t, r.stderr, "object /ccm/objects/sites/h2: breaks schemas/sites.json")
	r = admin.action("release", "current")
	assert.Contains(t, r.stdout, "no release promoted", "nothing written")

	_, err = cli.Put(context.Background(), "/ccm/objects/sites/h2", `{"v": "b"}`)
	require.NoError(t, err)
	promote(t, etcd, admin, id)
	r = admin.run(`{"v": "c", "http2": true}`, "object", "put", "sites", "new")
	assert.Equal(t, 1, r.code, "the promoted release's schema refuses it")
	assert.Contains(t, r.stderr, "object /ccm/objects/sites/new: breaks schemas/sites.json")
	r = admin.run(`{"v": "c"}`, "object", "put", "sites", "new")
	require.Equal(t, 0, r.code, r.stderr)

	loose := push(t, admin, release(t, "y:", ""))
	_, err = cli.Put(context.Background(), "/ccm/objects/sites/h3", `{"v": "b", "http2": true}`)
	require.NoError(t, err)
	r = admin.action("release", "promote", loose[:8])
	require.Equal(t, 0, r.code, "a release without schemas refuses nothing: %s", r.stderr)
	back := push(t, admin, strict)
	assert.Equal(t, id, back)
	r = admin.action("release", "promote", id[:8])
	assert.Equal(t, 1, r.code)
	r = admin.action("release", "promote", id[:8], "--force")
	require.Equal(t, 0, r.code, r.stderr)
}

// Once a release is promoted, ccm plan and ccm apply --once on a node
// with nothing in --config-dir read it, as the agents do; with
// --release-keys, apply refuses an unsigned one and writes nothing.
func TestPlanAndApplyOnceReadThePromotedRelease(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	putSites(t, etcd, 1, "a")
	n := newNode(t, "web1", t.TempDir(), etcd.Endpoints())
	r := n.run("", "plan", "--label", "x=y")
	assert.Equal(t, 1, r.code, "nothing to plan: %s", r.stdout)

	id := push(t, admin, release(t, "rel:", ""))
	promote(t, etcd, admin, id)
	r = n.run("", "plan", "--label", "x=y", "--color", "never")
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stdout, "+rel:a")

	_, keys := releaseKeys(t)
	r = n.run("", "apply", "--once", "--yes", "--release-keys", keys)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "is not signed, and release keys are configured")
	assert.Empty(t, n.read("/sites/s000.conf"), "nothing written")

	r = n.run("", "apply", "--once", "--yes")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "rel:a\n", n.read("/sites/s000.conf"))
	s := nodeStatus(t, etcd.Client(t), "web1")
	assert.Equal(t, id, s.Release)
}

// With the printed roles on an etcd with auth: a node's agent, with
// nothing in --config-dir, fetches and runs the release an operator
// promoted; the node's credentials cannot promote, push or rewrite one;
// the release writer pushes but cannot promote.
func TestANodeRoleReadsReleasesAndCannotPromoteOne(t *testing.T) {
	t.Parallel()
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "", "root", "root-secret")
	grantNodeRole(t, e, admin, "web1", "web1-secret")
	grantRole(t, e, admin, "ops-secret", "--operator", "alice")
	grantRole(t, e, admin, "ci-secret", "--release", "ci")
	ops := nodeOn(t, e, "", "ccm-operator-alice", "ops-secret")
	releaser := nodeOn(t, e, "", "ccm-release-ci", "ci-secret")
	ops.configDir = t.TempDir() // no schemas of the example's
	require.Equal(t, 0, ops.run(`{"v": "a"}`, "object", "put", "sites", "s000").code)

	id := push(t, releaser, release(t, "rel:", ""))
	r := releaser.run("", "release", "promote", id[:8])
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "permission denied", "the release writer does not promote")
	r = ops.run("", "release", "promote", id[:8])
	require.Equal(t, 0, r.code, r.stderr)

	web1 := nodeOn(t, e, "web1", "ccm-node-web1", "web1-secret")
	web1.configDir = t.TempDir()
	web1.start("agent", "--debounce", "0s", "--release-dir", filepath.Join(t.TempDir(), "releases"))
	root := rootClient(t, e)
	eventually(t, 60*time.Second, func() bool {
		s := nodeStatus(t, root, "web1")
		return s != nil && s.Result == api.ResultConverged && s.Release == id
	}, "web1 runs the promoted release under its node role")
	assert.Equal(t, "rel:a\n", web1.read("/sites/s000.conf"))

	cli := externalClient(t, e, "ccm-node-web1", "web1-secret")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, key := range []string{"/ccm/release", "/ccm/releases/" + id, "/ccm/releases/" + id + "/000000/000000", "/ccm/releases/x"} {
		_, err := cli.Put(ctx, key, `{"id": "`+id+`"}`)
		assert.ErrorContains(t, err, "permission denied", "a node writes no %s", key)
	}
	r = web1.run("", "release", "rollback")
	assert.Equal(t, 1, r.code)
}

// Agents move from their --config-dir to a promoted release, and back to
// it once the pointer is deleted, each through a run like any change.
func TestAgentsMoveFromTheirDirectoryToAReleaseAndBack(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	rev := putSites(t, etcd, 1, "a")
	local := release(t, "dir:", "")
	var nodes []*agentNode
	for _, name := range []string{"web1", "web2"} {
		nodes = append(nodes, startAgent(t, etcd, name, local, agentConfig{}))
	}
	onRelease(t, nodes, "", rev)

	id := push(t, admin, local)
	onRelease(t, nodes, id, promote(t, etcd, admin, id))
	for _, n := range nodes {
		assert.Equal(t, "dir:a\n", n.read("/sites/s000.conf"), "the same directory as a release: the same files")
	}
	next := push(t, admin, release(t, "rel:", ""))
	onRelease(t, nodes, next, promote(t, etcd, admin, next))

	resp, err := etcd.Client(t).Delete(context.Background(), "/ccm/release")
	require.NoError(t, err)
	onRelease(t, nodes, "", resp.Header.Revision)
	for _, n := range nodes {
		assert.Equal(t, "dir:a\n", n.read("/sites/s000.conf"), "%s: back to its --config-dir", n.name)
	}
	r := admin.action("status")
	assert.Contains(t, r.stdout, "Release: none promoted")
	assert.Regexp(t, `web1\s+idle\s+dir\s+\d+\s+no`, r.stdout)
}
