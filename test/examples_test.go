package test

import (
	"context"
	"fmt"
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

// needTools skips when Debian's nginx or PHP-FPM is missing (.ci/run
// installs both).
func needTools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		if _, err := exec.LookPath("/usr/sbin/nginx"); err != nil {
			t.Skip("nginx is not installed (apt-get install nginx)")
		}
	}
	if m, _ := filepath.Glob("/usr/sbin/php-fpm*"); len(m) == 0 {
		t.Skip("PHP-FPM is not installed (apt-get install php-fpm)")
	}
}

func TestTheExampleStackChecksWithRealNginxAndPHPFPM(t *testing.T) {
	needTools(t)
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	put := func(key, value string) int64 {
		resp, err := cli.Put(ctx, "/ccm/objects/"+key, value)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	put("users/www-data", `{"uid": 33}`)
	rev := put("sites/shop", `{"user":"www-data","domains":["shop.example.com"]}`)

	c := cluster.New(cli, cluster.Options{})
	var nodes []*node
	for i := 0; i < 3; i++ {
		dir := copyDir(t, "../examples/ccm")
		// The check helpers are the subject: the example's schema would
		// stop the evil site below at the door.
		require.NoError(t, os.RemoveAll(filepath.Join(dir, "schemas")))
		n := newNode(t, fmt.Sprintf("web%d", i), dir, etcd.Endpoints())
		n.env = []string{"CHECK_SKIP=0"}
		n.start("agent", "--debounce", "200ms", "--label", "role=web", "--lock-ttl", "5s")
		nodes = append(nodes, n)
	}
	reported := func(n *node, result string, rev int64) {
		eventually(t, 60*time.Second, func() bool {
			s, err := c.Status(ctx, n.name)
			return err == nil && s != nil && s.Result == result && s.Revision >= rev
		}, "%s reports %s at %d", n.name, result, rev)
	}
	for _, n := range nodes {
		reported(n, api.ResultConverged, rev)
		assert.Contains(t, n.read("/etc/nginx/sites-enabled/shop.conf"), "server_name shop.example.com;", "nginx accepted the vhost")
		assert.Contains(t, n.read("/etc/php/8.2/fpm/pool.d/shop.conf"), "[shop]", "php-fpm accepted the pool")
	}

	// A customer's domain list that breaks the vhost.
	put("sites/evil", `{"user":"www-data","domains":["evil.example;", "listen 99999"]}`)
	var f *api.Failure
	eventually(t, 60*time.Second, func() bool { f, _ = c.Failure(ctx); return f != nil }, "the first node's check fails and raises the flag")
	assert.Equal(t, "nginx-vhosts", f.Configuration)
	evilVhost := "/etc/nginx/sites-enabled/evil.conf"
	assert.Contains(t, f.Error, "check "+evilVhost)
	assert.NotContains(t, f.Error, ".ccm-", "the error names the final path, not the staged file")
	for _, n := range nodes {
		want := api.ResultHalted
		if n.name == f.Node {
			want = api.ResultFailed
		}
		eventually(t, 60*time.Second, func() bool {
			s, err := c.Status(ctx, n.name)
			return err == nil && s != nil && s.Result == want
		}, "%s reports %s", n.name, want)
		assert.Empty(t, n.read(evilVhost), "%s: the rejected vhost landed nowhere", n.name)
		assert.True(t, strings.Contains(n.read("/etc/nginx/sites-enabled/shop.conf"), "shop.example.com"), "%s: the good vhost stays", n.name)
	}
}
