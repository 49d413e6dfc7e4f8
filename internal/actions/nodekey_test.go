package actions

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A state directory from a plain mkdir (0755) is fine: the key goes into
// a keys directory the agent makes 0700 itself. A key of the layout
// before it is moved there, the same key; a state directory others may
// write is refused.
func TestTheNodeKeyLivesInAPrivateDirectoryOfItsOwn(t *testing.T) {
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(state, 0o755))
	require.NoError(t, os.Chmod(state, 0o755))
	k, err := LoadNodeKey(state)
	require.NoError(t, err)
	st, err := os.Stat(filepath.Join(state, "keys"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	again, err := LoadNodeKey(state)
	require.NoError(t, err)
	assert.Equal(t, k.Public(), again.Public(), "the same key at the next start")

	old := filepath.Join(t.TempDir(), "old")
	require.NoError(t, os.Mkdir(old, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(old, "action.key"), []byte(k.Private()+"\n"), 0o600))
	moved, err := LoadNodeKey(old)
	require.NoError(t, err)
	assert.Equal(t, k.Public(), moved.Public(), "the key of the old layout is kept")
	assert.NoFileExists(t, filepath.Join(old, "action.key"))
	assert.FileExists(t, filepath.Join(old, "keys", "action.key"))

	require.NoError(t, os.WriteFile(filepath.Join(old, "action.key"), []byte(k.Private()+"\n"), 0o644))
	_, err = LoadNodeKey(old)
	assert.ErrorContains(t, err, "action.key is mode 0644; the action key must be 0600 in a 0700 directory")

	open := filepath.Join(t.TempDir(), "open")
	require.NoError(t, os.Mkdir(open, 0o777))
	require.NoError(t, os.Chmod(open, 0o777))
	_, err = LoadNodeKey(open)
	assert.ErrorContains(t, err, "others may write it")
}
