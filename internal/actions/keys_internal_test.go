package actions

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Key options mean what OpenSSH reads: a backquoted pattern is literal,
// not every node; a lone CR never joins two keys into one line.
func TestKeyOptionsAreReadAsOpenSSHReadsThem(t *testing.T) {
	dir := t.TempDir()
	pub := func(name string) string {
		key := filepath.Join(dir, name)
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key).CombinedOutput()
		require.NoError(t, err, "%s", out)
		raw, err := os.ReadFile(key + ".pub")
		require.NoError(t, err)
		return strings.TrimSpace(string(raw))
	}
	a, b := pub("a"), pub("b")
	file := filepath.Join(dir, "keys")
	require.NoError(t, os.WriteFile(file, []byte("ccm-nodes=`*` "+a+"\n"), 0o644))
	keys, err := LoadAuthorizedKeys(file)
	require.NoError(t, err)
	require.Len(t, keys.keys, 1)
	for _, k := range keys.keys {
		assert.NotContains(t, k.Nodes, "*", "a backquoted * is literal")
	}
	require.NoError(t, os.WriteFile(file, []byte(a+"\r"+b+"\n"), 0o644))
	_, err = LoadAuthorizedKeys(file)
	require.ErrorContains(t, err, "control character")
}
