package applier_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/configs"
)

// A configuration whose definition changed runs its validate and
// on_change once, even when every file already matches: a hook added
// after a node wrote its files still runs there.
func TestAChangedDefinitionRunsItsCommandsOnce(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	hook := func(name string) string {
		return `[sh, -c, 'echo ` + name + ` >> "$0"', ` + strconv.Quote(log) + `]`
	}
	web := "files: [{path: /x, content: x}]\nvalidate: " + hook("validate") + "\n"
	f := newFixture(t, map[string]string{"web.yaml": web})
	require.NoError(t, f.run().Err)
	require.NoError(t, f.run().Err)
	ran := func() []string {
		raw, _ := os.ReadFile(log)
		return strings.Fields(string(raw))
	}
	assert.Equal(t, []string{"validate"}, ran(), "the first run changed a file; the second changed nothing")

	reload := func(yaml string) {
		require.NoError(t, os.WriteFile(filepath.Join(f.dir, "web.yaml"), []byte(yaml), 0o644))
		set, err := configs.Load(f.dir)
		require.NoError(t, err)
		f.set = set
	}
	reload(web + "on_change:\n  - " + hook("on_change") + "\n")
	p := f.plan("web")
	assert.True(t, p.Redefined)
	assert.Empty(t, p.Changes, "the file already matches")
	require.NoError(t, f.run().Err)
	assert.Equal(t, []string{"validate", "validate", "on_change"}, ran(), "the new definition ran its commands")
	require.NoError(t, f.run().Err)
	assert.Equal(t, []string{"validate", "validate", "on_change"}, ran(), "once")
	assert.False(t, f.plan("web").Redefined)
}
