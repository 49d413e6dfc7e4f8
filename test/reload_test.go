package test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// SIGHUP under a promoted release is a full run of the loaded release, as
// OPERATIONS says: it repairs a file changed by hand, and reads nothing
// of --config-dir.
func TestSIGHUPUnderAReleaseRepairsAHandEdit(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	rev := putSites(t, etcd, 1, "a")
	local := release(t, "dir:", "")
	n := startAgent(t, etcd, "web1", local, agentConfig{})
	// Its first run, of --config-dir, is reported before the promotion:
	// started later, it would be at a revision past the promotion's.
	onRelease(t, []*agentNode{n}, "", rev)
	id := push(t, admin, release(t, "rel:", ""))
	onRelease(t, []*agentNode{n}, id, promote(t, etcd, admin, id))
	require.Equal(t, "rel:a\n", n.read("/sites/s000.conf"))

	require.NoError(t, os.WriteFile(filepath.Join(n.root, "sites/s000.conf"), []byte("by hand\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(local, "sites.yaml"), []byte("broken: [\n"), 0o644))
	before := n.runs()
	require.NoError(t, n.ag.Reload(), "--config-dir is not read under a release")
	eventually(t, 30*time.Second, func() bool { return n.runs() > before }, "SIGHUP makes a run")
	s := n.reported(t, 0, api.ResultConverged)
	assert.Equal(t, id, s.Release, "of the loaded release")
	assert.Equal(t, "rel:a\n", n.read("/sites/s000.conf"), "the full run repaired the hand edit")
}
