package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// complete runs `ccm __complete` (what the shell scripts call) with the
// node's settings in the environment, as a shell would have them, and
// returns the candidates and the directive line.
func (n *node) complete(args ...string) (candidates []string, directive string) {
	n.t.Helper()
	// A completion that hangs is a failure: the shell would hang with it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ccmBin, append([]string{"__complete"}, args...)...)
	cmd.Env = append(os.Environ(), "CCM_ENDPOINTS="+strings.Join(n.endpoints, ","), "CCM_CONFIG_DIR="+n.configDir)
	out, err := cmd.Output()
	require.NoError(n.t, err, "ccm __complete %v", args)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

func TestCompletionKnowsTheCluster(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	for key, value := range map[string]string{
		"/ccm/objects/sites/alpha":     `{"user":"a","domains":["a.example"]}`,
		"/ccm/objects/sites/beta":      `{"user":"b","domains":["b.example"]}`,
		"/ccm/objects/certs/c1":        `{"site":"alpha"}`,
		"/ccm/objects/sites/bad\nname": `{}`, // outside the key grammar: never offered
	} {
		_, err := cli.Put(ctx, key, value)
		require.NoError(t, err)
	}
	dir, err := filepath.Abs("../examples/ccm")
	require.NoError(t, err)
	web := newNode(t, "web1", dir, etcd.Endpoints())
	web.start("agent")
	_, err = cli.Put(ctx, "/ccm/labels/web1", `{"role":"web","dc":"ams"}`)
	require.NoError(t, err)
	c := cluster.New(cli, cluster.Options{Prefix: api.DefaultPrefix})
	eventually(t, 30*time.Second, func() bool {
		alive, err := c.Alive(ctx)
		return err == nil && len(alive) == 1
	}, "web1 announces itself")

	n := newNode(t, "", dir, etcd.Endpoints())
	got, directive := n.complete("object", "get", "")
	assert.Equal(t, []string{"certs", "sites"}, got, "object types")
	assert.Equal(t, ":4", directive, "no file names offered")
	got, _ = n.complete("object", "get", "sites", "")
	assert.Equal(t, []string{"alpha", "beta"}, got, "IDs of the type; a key outside the grammar is left out")
	got, _ = n.complete("object", "delete", "sites", "b")
	assert.Equal(t, []string{"beta"}, got, "what was typed narrows the IDs")
	got, _ = n.complete("object", "get", "sites", "alpha", "")
	assert.Empty(t, got, "TYPE ID is all object get takes")
	got, _ = n.complete("object", "list", "s")
	assert.Equal(t, []string{"sites"}, got)

	got, _ = n.complete("plan", "--config", "")
	assert.Equal(t, []string{"crontab", "nginx-vhosts", "php-fpm-pools", "unix-users"}, got, "configurations of the directory")
	got, _ = n.complete("apply", "--once", "--config", "nginx")
	assert.Equal(t, []string{"nginx-vhosts"}, got)

	got, _ = n.complete("action", "run", "")
	assert.Equal(t, []string{"ccm.converge", "ccm.plan", "site-info"}, got, "built-in actions and the directory's handlers")
	got, _ = n.complete("action", "run", "site-info", "--node", "")
	assert.Equal(t, []string{"web1"}, got, "node names")
	got, _ = n.complete("action", "run", "site-info", "--label", "")
	assert.Equal(t, []string{"dc=ams", "role=web"}, got, "labels operators gave the nodes")

	// etcd unreachable: nothing offered, and the shell gets its prompt back.
	down := newNode(t, "", dir, []string{freeAddr(t)})
	got, directive = down.complete("object", "get", "")
	assert.Empty(t, got)
	assert.Equal(t, ":4", directive)
}
