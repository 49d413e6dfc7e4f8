package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// offline is an agent on the configuration directory holding yaml as
// sites.yaml, whose client is never dialled: for what needs no etcd.
func offline(t *testing.T, yaml string) (*Agent, string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	a, err := New(Options{Client: cli, Node: "web1", ConfigDir: dir, Root: t.TempDir(), StateDir: t.TempDir()})
	require.NoError(t, err)
	return a, dir
}

// A change of a type no configuration subscribes to does not make the
// node BEHIND: the sink selects the subscribers of what changed, and none
// selects none.
func TestAnUnsubscribedTypeLeavesTheNodeUpToDate(t *testing.T) {
	t.Parallel()
	a, _ := offline(t, "subscribes: [sites]\nfiles:\n  - {path: '/s/{{ .Object.ID }}', for_each: sites, content: x}\n")
	sink := (*events)(a)
	sink.Add(5, "nobody")
	assert.Zero(t, a.presence.value().Pending, "no configuration reads nobody")
	sink.Add(6, "sites")
	assert.Equal(t, int64(6), a.presence.value().Pending, "sites concerns the node")
}
