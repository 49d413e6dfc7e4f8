package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// An offline plan of an export renders .Object.Revision as the node did:
// editing one object of an export shows that one change, not one per file
// that embeds a revision. A file without revisions plans with a warning
// that says so.
func TestOfflinePlanOfAnExportShowsOnlyTheRealChange(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.user }} at revision {{ .Object.Revision }}\n"}
`), 0o644))
	admin := caller(t, etcd, dir)
	var rev int64
	for _, id := range []string{"s1", "s2", "s3"} {
		r := admin.run(`{"user": "u-`+id+`"}`, "object", "put", "sites", id)
		require.Equal(t, 0, r.code, r.stderr)
	}
	head, err := etcd.Client(t).Get(context.Background(), "/")
	require.NoError(t, err)
	rev = head.Header.Revision
	n := startAgent(t, etcd, "n", dir, agentConfig{})
	n.reported(t, rev, api.ResultConverged)
	require.Contains(t, n.read("/sites/s1.conf"), "u-s1 at revision ")

	onNode := &node{t: t, name: "n", root: n.root, state: n.state, configDir: dir, endpoints: admin.endpoints}
	r := onNode.action("object", "export")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"$revisions"`)
	export := filepath.Join(t.TempDir(), "export.json")
	require.NoError(t, os.WriteFile(export, []byte(r.stdout), 0o644))
	r = onNode.action("plan", "--objects", export, "--color", "never")
	assert.Equal(t, 0, r.code, "the unedited export plans no change: %s%s", r.stdout, r.stderr)
	assert.NotContains(t, r.stderr, "has no revisions")

	edited := filepath.Join(t.TempDir(), "edited.json")
	require.NoError(t, os.WriteFile(edited, []byte(strings.Replace(readFile(t, export), `"user": "u-s2"`, `"user": "Edited"`, 1)), 0o644))
	r = onNode.action("plan", "--objects", edited, "--color", "never")
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stdout, "+Edited at revision ")
	assert.Equal(t, 1, strings.Count(r.stdout, "\n+++ "), "one file changes, the one edited: %s", r.stdout)

	bare := filepath.Join(t.TempDir(), "bare.json")
	require.NoError(t, os.WriteFile(bare, []byte(`{"sites": {"s1": {"user": "u-s1"}, "s2": {"user": "u-s2"}, "s3": {"user": "u-s3"}}}`), 0o644))
	r = onNode.action("plan", "--objects", bare, "--color", "never")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, bare+" has no revisions ($revision and $revisions, which ccm object export writes): .Revision and .Object.Revision render as 0 here")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
