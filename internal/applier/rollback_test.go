package applier_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
)

// poolsAndVhosts is a configuration directory of two: pools (with extra,
// a line of YAML) and vhosts, which depends on it and whose validate fails
// while the file broken exists.
func poolsAndVhosts(extra, broken string) map[string]string {
	return map[string]string{
		"pools.yaml": `name: pools
subscribes: [sites]
files:
  - {path: '/pools/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
` + extra + "\n",
		"vhosts.yaml": `name: vhosts
subscribes: [sites]
depends_on: [pools]
files:
  - {path: '/vhosts/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
validate: [sh, -c, 'test ! -e "$0"', ` + strconv.Quote(broken) + `]
`}
}

// A run is one transaction: when its second configuration fails, the
// first, which converged in the same run, is rolled back to what it was
// before the run, and its on_change runs again so that its service reloads
// the restored files. The node runs the previous state whole, not half of
// each.
func TestAFailedRunRollsBackEveryConfigurationItChanged(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log, broken := filepath.Join(dir, "log"), filepath.Join(dir, "broken")
	f := newFixture(t, poolsAndVhosts(`on_change: [[sh, -c, 'echo pools >> "$0"', `+strconv.Quote(log)+`]]`, broken))
	f.put("sites/a", `{"v":"v1"}`)
	require.NoError(t, f.run().Err)
	require.NoError(t, os.Remove(log))

	f.put("sites/a", `{"v":"v2"}`)
	f.put("sites/b", `{"v":"v2"}`)
	require.NoError(t, os.WriteFile(broken, nil, 0o644))
	r := f.run()
	require.Error(t, r.Err)
	assert.ErrorIs(t, r.Err, applier.ErrValidate)
	config, _ := r.FirstFailure()
	assert.Equal(t, "vhosts", config, "the flag names the configuration that failed")
	assert.Equal(t, "v1\n", f.read("/pools/a.conf"), "the first configuration is back at the previous state")
	assert.NoFileExists(t, f.path("/pools/b.conf"), "and what it created is gone")
	assert.Equal(t, "v1\n", f.read("/vhosts/a.conf"))
	results := map[string]applier.Result{}
	for _, o := range r.Outcomes {
		results[o.Config] = o.Result
	}
	assert.Equal(t, map[string]applier.Result{"pools": applier.RolledBack, "vhosts": applier.Failed}, results)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	assert.Equal(t, "pools\npools\n", string(b), "on_change ran for the change, then again for the restored files")

	require.NoError(t, os.Remove(broken))
	require.NoError(t, f.run().Err)
	assert.Equal(t, "v2\n", f.read("/pools/a.conf"), "the next run converges forward")
	assert.Equal(t, "v2\n", f.read("/pools/b.conf"))
}

// A rolled-back run that changed one file of many puts back the manifest
// the state directory had: its journal leaves the unchanged file list out
// (it is the one recorded), and the rollback still restores it whole, so
// a later run still prunes a file of the list.
func TestARollbackOfOneChangedFileOfManyKeepsTheFileList(t *testing.T) {
	t.Parallel()
	broken := filepath.Join(t.TempDir(), "broken")
	f := newFixture(t, poolsAndVhosts("", broken))
	f.put("sites/a", `{"v":"v1"}`)
	f.put("sites/b", `{"v":"v1"}`)
	require.NoError(t, f.run().Err)

	f.put("sites/a", `{"v":"v2"}`) // one file of two: the same list
	require.NoError(t, os.WriteFile(broken, nil, 0o644))
	require.ErrorIs(t, f.run().Err, applier.ErrValidate)
	assert.Equal(t, "v1\n", f.read("/pools/a.conf"), "rolled back")

	require.NoError(t, os.Remove(broken))
	f.del("sites/b")
	require.NoError(t, f.run().Err)
	assert.Equal(t, "v2\n", f.read("/pools/a.conf"))
	assert.NoFileExists(t, f.path("/pools/b.conf"), "the restored manifest still lists b: its file is pruned")
	assert.NoFileExists(t, f.path("/vhosts/b.conf"))
}

// The drift watcher's index of managed paths changes only when the paths
// do: an event that rewrites one file in place publishes no new
// generation (the watcher compares nothing), one that adds a file does,
// and so does one that removes one.
func TestManagedPathsArePublishedOnlyWhenTheyChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t, map[string]string{"pools.yaml": `name: pools
subscribes: [sites]
files:
  - {path: '/pools/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
`})
	f.put("sites/a", `{"v":"v1"}`)
	require.NoError(t, f.run().Err)
	first := f.applier.Managed()
	assert.Equal(t, []string{f.path("/pools/a.conf")}, first.Paths)

	f.put("sites/a", `{"v":"v2"}`)
	require.NoError(t, f.run().Err)
	assert.Equal(t, "v2\n", f.read("/pools/a.conf"))
	assert.Equal(t, first.Generation, f.applier.Managed().Generation, "rewritten in place: the same paths")

	f.put("sites/b", `{"v":"v1"}`)
	require.NoError(t, f.run().Err)
	added := f.applier.Managed()
	assert.Greater(t, added.Generation, first.Generation)
	assert.Equal(t, []string{f.path("/pools/a.conf"), f.path("/pools/b.conf")}, added.Paths)

	f.del("sites/a")
	require.NoError(t, f.run().Err)
	removed := f.applier.Managed()
	assert.Greater(t, removed.Generation, added.Generation)
	assert.Equal(t, []string{f.path("/pools/b.conf")}, removed.Paths)
}
