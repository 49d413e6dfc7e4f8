package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A SIGHUP whose load of --config-dir ends after a run adopted a
// promoted release keeps the release: Reload swaps its selection only if
// it is still the one it loaded over.
func TestAReloadDuringAnAdoptionKeepsTheRelease(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte("files: [{path: /x, content: x}]\n"), 0o644))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}}) // never dialled
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	state := t.TempDir()
	a, err := New(Options{Client: cli, Node: "web1", ConfigDir: dir, Root: t.TempDir(), StateDir: state})
	require.NoError(t, err)

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
