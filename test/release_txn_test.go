package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// twoConfigs is a release of pools and vhosts (which runs second), each a
// file per site rendered as prefix+v; extra is added to vhosts.
func twoConfigs(t *testing.T, prefix, extra string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"pools", "vhosts"} {
		yaml := fmt.Sprintf("name: %s\nsubscribes: [sites]\nfiles:\n  - {path: '/%s/{{ .Object.ID }}.conf', for_each: sites, content: \"%s{{ .Object.Data.v }}\\n\"}\n", name, name, prefix)
		if name == "vhosts" {
			yaml += "depends_on: [pools]\n" + extra
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(yaml), 0o644))
	}
	return dir
}

// A release whose second configuration fails on the canary leaves the
// canary's first configuration at the previous release: the failed run is
// rolled back whole, so the canary runs one release, not half of each.
func TestAReleaseWhoseSecondConfigurationFailsLeavesTheFirstAtThePreviousRelease(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	putSites(t, etcd, 2, "a")
	n := startAgent(t, etcd, "web1", t.TempDir(), agentConfig{})
	v1 := push(t, admin, twoConfigs(t, "v1:", ""))
	onRelease(t, []*agentNode{n}, v1, promote(t, etcd, admin, v1))
	require.Equal(t, "v1:a\n", n.read("/pools/s000.conf"))

	v2 := push(t, admin, twoConfigs(t, "v2:", "validate: [sh, -c, 'echo refused; exit 1']\n"))
	promote(t, etcd, admin, v2)
	failed := failedNode(t, cluster.New(etcd.Client(t), cluster.Options{}), "the canary fails release 2")
	require.Equal(t, "web1", failed)
	s := n.reported(t, 0, api.ResultFailed)
	assert.Contains(t, s.Error, "refused")
	for _, f := range []string{"/pools/s000.conf", "/pools/s001.conf", "/vhosts/s000.conf"} {
		assert.Equal(t, "v1:a\n", n.read(f), "%s: release 1's", f)
	}
}
