package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
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

// The example on three nodes, with the real nginx -t, php-fpm -t and
// useradd: 50 customer sites converge, each pool and home owned by its
// user; one site whose domains break nginx -t is quarantined by the one
// node that tried it, skipped by the others, never raises the flag, and
// is lifted once the customer fixes it.
func TestTheExampleStackChecksWithRealNginxAndPHPFPM(t *testing.T) {
	needTools(t)
	needRoot(t)
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	put := func(key, value string) int64 {
		resp, err := cli.Put(ctx, "/ccm/objects/"+key, value)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	put("users/alice", `{"uid": 2001}`)
	var rev int64
	for i := 0; i < 50; i++ {
		rev = put(fmt.Sprintf("sites/site%02d", i), fmt.Sprintf(`{"user":"alice","domains":["site%02d.example.com"]}`, i))
	}

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
	reported := func(n *node, rev int64) *api.Status {
		var s *api.Status
		eventually(t, 120*time.Second, func() bool {
			var err error
			s, err = c.Status(ctx, n.name)
			return err == nil && s != nil && s.Result == api.ResultConverged && s.Revision >= rev
		}, "%s reports converged at %d", n.name, rev)
		return s
	}
	vhost := func(i int) string { return fmt.Sprintf("/etc/nginx/sites-enabled/site%02d.conf", i) }
	for _, n := range nodes {
		reported(n, rev)
		for i := 0; i < 50; i++ {
			require.Contains(t, n.read(vhost(i)), fmt.Sprintf("server_name site%02d.example.com;", i), "nginx accepted the vhost")
		}
		assert.Contains(t, n.read("/etc/php/8.2/fpm/pool.d/site07.conf"), "user = alice", "php-fpm accepted the pool of a real user")
		assert.Contains(t, n.read("/etc/passwd"), "alice:x:2001:", "useradd made the user")
		for _, dir := range []string{"/home/alice", "/srv/www/site07"} {
			uid, _ := ownerOf(t, filepath.Join(n.root, dir))
			assert.Equal(t, 2001, uid, "%s: %s belongs to its customer", n.name, dir)
		}
	}

	// One customer's domains break nginx -t (the template refuses what is
	// no hostname at all; a wildcard in the wrong place only nginx knows).
	evilRev := put("sites/site17", `{"user":"alice","domains":["*evil.example"]}`)
	other := put("sites/site18", `{"user":"alice","domains":["site18.example.com","www.site18.example.com"]}`)
	var qs []api.Quarantine
	eventually(t, 120*time.Second, func() bool {
		qs, _ = c.Quarantines(ctx)
		return len(qs) == 1
	}, "the first node to try the site quarantines it")
	q := qs[0]
	assert.Equal(t, "sites/site17", q.Object())
	assert.Equal(t, evilRev, q.Revision)
	assert.Equal(t, "nginx-vhosts", q.Configuration)
	assert.Contains(t, q.Error, "check "+vhost(17))
	assert.NotContains(t, q.Error, ".ccm-", "the error names the final path, not the staged file")
	for _, n := range nodes {
		s := reported(n, other)
		assert.Equal(t, []string{"sites/site17"}, s.Quarantined, "%s holds the site back", n.name)
		assert.Contains(t, n.read(vhost(17)), "server_name site17.example.com;", "%s: the last good vhost stays", n.name)
		assert.Contains(t, n.read(vhost(18)), "www.site18.example.com", "%s: every other site converges", n.name)
	}
	qs, err := c.Quarantines(ctx)
	require.NoError(t, err)
	assert.Len(t, qs, 1, "the other nodes skipped the site without trying it")
	f, err := c.Failure(ctx)
	require.NoError(t, err)
	assert.Nil(t, f, "one customer's bad site never halts the rollout")

	list := nodes[0].run("", "quarantine", "list")
	assert.Equal(t, 0, list.code, list.stderr)
	assert.Regexp(t, `sites/site17\s+\d+\s+held\s+`+q.Node+`\s+nginx-vhosts`, list.stdout)
	get := nodes[0].run("", "object", "get", "sites", "site17")
	assert.Contains(t, get.stderr, "QUARANTINED at this revision: found by node "+q.Node)
	assert.Contains(t, nodes[0].run("", "status").stdout, "sites/site17 at revision")
	plan := nodes[1].run("", "plan", "--label", "role=web")
	assert.Equal(t, 0, plan.code, "a node's plan skips what its runs skip: %s%s", plan.stdout, plan.stderr)
	assert.Contains(t, plan.stdout, "! sites/site17 is quarantined at its revision")

	// Cleared, the site is tried again at the next run, and found bad
	// again by the one node that tries it.
	clear := nodes[0].run("", "quarantine", "clear", "sites/site17")
	require.Equal(t, 0, clear.code, clear.stderr)
	assert.Contains(t, clear.stdout, "Quarantine of sites/site17 at revision ")
	qs, err = c.Quarantines(ctx)
	require.NoError(t, err)
	assert.Empty(t, qs)
	again := put("sites/site18", `{"user":"alice","domains":["site18.example.com"]}`)
	for _, n := range nodes {
		s := reported(n, again)
		assert.Equal(t, []string{"sites/site17"}, s.Quarantined)
	}
	qs, err = c.Quarantines(ctx)
	require.NoError(t, err)
	require.Len(t, qs, 1, "one node tried it again; the others skipped it")
	assert.Equal(t, evilRev, qs[0].Revision)

	// The customer fixes it: a new revision lifts the quarantine.
	fixed := put("sites/site17", `{"user":"alice","domains":["fixed.example.com"]}`)
	for _, n := range nodes {
		s := reported(n, fixed)
		assert.Empty(t, s.Quarantined)
		assert.Contains(t, n.read(vhost(17)), "server_name fixed.example.com;")
	}
	eventually(t, 60*time.Second, func() bool {
		qs, _ = c.Quarantines(ctx)
		return len(qs) == 0
	}, "the node that quarantined the site lifts its record")
}

// needRoot skips a test that creates users and chowns their files.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates users with useradd --prefix and chowns their homes")
	}
}

// ownerOf is the owner of a path.
func ownerOf(t *testing.T, path string) (uid, gid int) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	s := st.Sys().(*syscall.Stat_t)
	return int(s.Uid), int(s.Gid)
}
