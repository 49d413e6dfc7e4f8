package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

func TestApplyOnceConvergesPrunesAndReports(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	n := newNode(t, "web1", "../examples/ccm", etcd.Endpoints())

	r := n.run("", "object", "import", "../examples/objects.json")
	require.Equal(t, 0, r.code, r.stderr)
	r = n.run("", "plan", "--color", "never")
	require.Equal(t, 2, r.code, r.stderr)
	// The group, two users with their homes, two document roots, two cron
	// files, two pools, two vhosts and their two directories.
	assert.Contains(t, r.stdout, "Plan: 15 to create, 0 to change, 0 to remove.")
	assert.Contains(t, r.stdout, "+ user alice (uid 2001, group alice, groups customers, home /home/alice, shell /bin/bash)\n")

	r = n.run("", "apply", "--once")
	require.Equal(t, 0, r.code, r.stderr)
	assert.FileExists(t, filepath.Join(n.root, "etc/nginx/sites-enabled/blog.conf"))
	r = n.run("", "plan")
	assert.Equal(t, 0, r.code, "a second plan finds nothing to do: %s", r.stdout)

	// Deleting a site removes its vhost and its pool.
	r = n.run("", "object", "delete", "sites", "blog")
	require.Equal(t, 0, r.code, r.stderr)
	r = n.run("", "plan", "--color", "never")
	require.Equal(t, 2, r.code)
	assert.Contains(t, r.stdout, "--- a/etc/nginx/sites-enabled/blog.conf\n+++ /dev/null\n")
	assert.Contains(t, r.stdout, "Plan: 0 to create, 0 to change, 2 to remove.")
	r = n.run("", "apply", "--once")
	require.Equal(t, 0, r.code, r.stderr)
	assert.NoFileExists(t, filepath.Join(n.root, "etc/nginx/sites-enabled/blog.conf"))
	assert.NoFileExists(t, filepath.Join(n.root, "etc/php/8.2/fpm/pool.d/blog.conf"))
	assert.FileExists(t, filepath.Join(n.root, "etc/nginx/sites-enabled/shop.conf"))

	r = n.run("", "status", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var view cluster.View
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &view))
	require.Len(t, view.Nodes, 1)
	assert.Equal(t, "web1", view.Nodes[0].Name)
	assert.Equal(t, api.ResultConverged, view.Nodes[0].Status.Result)
	assert.Nil(t, view.Nodes[0].Presence, "presence goes with the session")
	assert.Empty(t, view.Holder)
}

func TestFailingValidateRestoresFilesSetsTheFlagAndHaltsOtherNodes(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	marker := filepath.Join(t.TempDir(), "nginx-is-broken")
	dir := copyDir(t, "../examples/ccm")
	vhosts := filepath.Join(dir, "nginx-vhosts.yaml")
	raw, err := os.ReadFile(vhosts)
	require.NoError(t, err)
	raw = []byte(strings.Replace(string(raw), `validate: ["true"]`, `validate: [test, "!", -e, `+strconv.Quote(marker)+`]`, 1))
	require.NoError(t, os.WriteFile(vhosts, raw, 0o644))

	web1 := newNode(t, "web1", dir, etcd.Endpoints())
	web2 := newNode(t, "web2", dir, etcd.Endpoints())
	require.Equal(t, 0, web1.run("", "object", "import", "../examples/objects.json").code)
	r := web1.run("", "apply", "--once")
	require.Equal(t, 0, r.code, r.stderr)
	before := tree(t, web1.root)

	// A change that nginx would reject.
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	r = web1.run(`{"user":"alice","domains":["new.example.com"]}`, "object", "put", "sites", "shop")
	require.Equal(t, 0, r.code, r.stderr)
	r = web1.run("", "apply", "--once")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "configuration nginx-vhosts: validate failed, files restored")
	after := tree(t, web1.root)
	for path, content := range before {
		if strings.Contains(path, "nginx") {
			assert.Equal(t, content, after[path], "%s is restored byte for byte", path)
		}
	}
	assert.Equal(t, before["/etc/php/8.2/fpm/pool.d/shop.conf"], after["/etc/php/8.2/fpm/pool.d/shop.conf"],
		"php-fpm-pools ran before nginx-vhosts, then was rolled back with the failed run")
	assert.Contains(t, r.stderr, "rolled back", "and says so")

	r = web1.run("", "status")
	assert.Equal(t, 3, r.code)
	assert.Contains(t, r.stdout, "Failure flag: SET by node web1, configuration nginx-vhosts")
	// It failed at a revision above the one it converged: behind.
	assert.Regexp(t, `web1\s+down\s+dir\s+\d+\s+yes\s+failed`, r.stdout)

	// The next node does not apply while the flag is set.
	r = web2.run("", "apply", "--once")
	assert.Equal(t, 3, r.code, r.stderr)
	assert.Contains(t, r.stderr, "halted by the failure flag")
	assert.Empty(t, tree(t, web2.root))
	r = web2.run("", "status")
	assert.Regexp(t, `web2\s+down\s+dir\s+\d+\s+yes\s+halted`, r.stdout)

	// Fixed and resumed, both converge.
	require.NoError(t, os.Remove(marker))
	r = web2.run("", "resume")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Failure flag cleared (was set by node web1, configuration nginx-vhosts).")
	for _, n := range []*node{web2, web1} {
		r = n.run("", "apply", "--once")
		require.Equal(t, 0, r.code, r.stderr)
		b, err := os.ReadFile(filepath.Join(n.root, "etc/nginx/sites-enabled/shop.conf"))
		require.NoError(t, err)
		assert.Contains(t, string(b), "server_name new.example.com;")
	}
	assert.Equal(t, 0, web1.run("", "status").code)
}

func TestAMalformedObjectIsQuarantinedAlone(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	n := newNode(t, "web1", "../examples/ccm", etcd.Endpoints())
	require.Equal(t, 0, n.run("", "object", "import", "../examples/objects.json").code)
	require.Equal(t, 0, n.run("", "apply", "--once").code)
	before := tree(t, n.root)

	cli := etcd.Client(t)
	_, err := cli.Put(context.Background(), "/ccm/objects/sites/broken", `{"user": `)
	require.NoError(t, err)
	_, err = cli.Put(context.Background(), "/ccm/objects/sites/bad$key", `{}`)
	require.NoError(t, err)
	_, err = cli.Put(context.Background(), "/ccm/objects/users/carol", `{"uid": 2003}`)
	require.NoError(t, err)

	r := n.run("", "apply", "--once")
	assert.Equal(t, 0, r.code, "a malformed object is quarantined, not a failure: %s", r.stderr)
	assert.Contains(t, r.stderr, "object /ccm/objects/sites/broken: value is not valid JSON")
	assert.Contains(t, r.stderr, `key \"/ccm/objects/sites/bad$key\": id \"bad$key\": must match`, "ignored keys are reported")
	qs, err := cluster.New(cli, cluster.Options{}).Quarantines(context.Background())
	require.NoError(t, err)
	require.Len(t, qs, 1)
	assert.Equal(t, "sites/broken", qs[0].Object())
	after := tree(t, n.root)
	for path, content := range before {
		if strings.Contains(path, "nginx") || strings.Contains(path, "php") {
			assert.Equal(t, content, after[path], "%s is untouched", path)
		}
	}
	assert.Contains(t, after, "/etc/cron.d/ccm-carol", "configurations not reading sites still converge")
}

func TestObjectCommands(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	n := newNode(t, "n", "../examples/ccm", etcd.Endpoints())
	obj := filepath.Join(t.TempDir(), "o.json")
	require.NoError(t, os.WriteFile(obj, []byte(`{"user":"alice","domains":["a.example"]}`+"\n"), 0o644))

	assert.Equal(t, 0, n.run("", "object", "put", "sites", "a", "-f", obj).code)
	assert.Equal(t, 0, n.run(`{"user":"bob","domains":["b.example"]}`, "object", "put", "sites", "b").code)
	r := n.run("[1]", "object", "put", "sites", "c")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "object /ccm/objects/sites/c: value is a JSON array, want a JSON object")

	r = n.run("", "object", "list")
	assert.Equal(t, "sites/a\nsites/b\n", r.stdout)
	// A key written by anyone, with a terminal escape sequence in it.
	_, err := etcd.Client(t).Put(context.Background(), "/ccm/objects/sites/evil\x1b]0;owned\a", "{}")
	require.NoError(t, err)
	r = n.run("", "object", "list")
	assert.Equal(t, "sites/a\nsites/b\nsites/evil\\x1b]0;owned\\a\n", r.stdout, "raw key bytes are escaped")
	r = n.run("", "object", "get", "sites", "a")
	assert.JSONEq(t, `{"user":"alice","domains":["a.example"]}`, r.stdout)
	assert.Equal(t, 0, n.run("", "object", "delete", "sites", "a").code)
	r = n.run("", "object", "delete", "sites", "a")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "object /ccm/objects/sites/a: not found")
}

func TestOneShotCommandsGiveUpWithTheRealCause(t *testing.T) {
	t.Parallel() // twelve 2 s timeouts: waited out side by side, not in turn
	plain := etcdtest.New(t, 1)
	pki := etcdtest.NewPKI(t)
	tests := []struct {
		name      string
		endpoints []string
		flags     []string
		want      string
	}{
		{"refused port", []string{"127.0.0.1:1"}, nil, "etcd at 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused"},
		{"unknown host", []string{"no-such-host.invalid:2379"}, nil, "etcd at no-such-host.invalid:2379: dial tcp: lookup no-such-host.invalid"},
		{"TLS against plain etcd", plain.Endpoints(), []string{"--cacert", pki.CACert}, "TLS handshake: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, "n", "../examples/ccm", tt.endpoints)
			n.flags = tt.flags
			for _, cmd := range [][]string{{"apply", "--once"}, {"status"}, {"object", "list"}, {"object", "get", "sites", "x"}} {
				start := time.Now()
				r := n.run("", append(cmd, "--timeout", "2s")...)
				took := time.Since(start)
				assert.Equal(t, 1, r.code, "%v: %s", cmd, r.stderr)
				assert.Contains(t, r.stderr, "etcd unreachable within --timeout 2s", "%v", cmd)
				assert.Contains(t, r.stderr, tt.want, "%v: the real cause", cmd)
				assert.NotContains(t, r.stderr, "retrying of unary invoker", "%v: the cause once, not the client's retries", cmd)
				assert.Less(t, took, 15*time.Second, "%v gives up instead of waiting forever", cmd)
			}
			assert.Empty(t, tree(t, n.root))
		})
	}
}
