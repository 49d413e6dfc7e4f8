package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A SIGHUP whose load of --config-dir ends after a run adopted a
// promoted release keeps the release: Reload swaps its selection only if
// it is still the one it loaded over.
func TestAReloadDuringAnAdoptionKeepsTheRelease(t *testing.T) {
	t.Parallel()
	a, dir := offline(t, "files: [{path: /x, content: x}]\n")

	cur := a.selection.Load()
	fromDir, err := load(dir, "") // SIGHUP reads --config-dir...
	require.NoError(t, err)
	rel, err := load(dir, "")
	require.NoError(t, err)
	rel.release = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	a.adopt(rel) // ...while a run adopts a release under the lock

	require.NoError(t, a.reload(cur, fromDir, nil))
	assert.Same(t, rel, a.selection.Load(), "the adopted release stays")
	assert.Equal(t, 1, a.deb.Pending(), "and runs in full")

	require.NoError(t, a.reload(a.selection.Load(), fromDir, nil))
	assert.Same(t, fromDir, a.selection.Load(), "a reload over what it loaded swaps")
}
