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
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/schemas"
)

// schemaConfig is the site configuration with the example's schema for
// sites.
func schemaConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.user }}\n"}
`), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "schemas"), 0o755))
	raw, err := os.ReadFile("../examples/ccm/schemas/sites.json")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "schemas", "sites.json"), raw, 0o644))
	return dir
}

func TestSchemasRefuseBadObjectsAtTheDoorAndQuarantineThoseWrittenPastIt(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := schemaConfig(t)
	admin := caller(t, etcd, dir)
	cli := etcd.Client(t)
	ctx := context.Background()

	r := admin.action("validate")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "1 schemas OK: sites")

	// put: the key and every field at fault.
	r = admin.run(`{"user": "Root!", "domains": ["ok.example", 7], "extra": 1}`, "object", "put", "sites", "bad")
	assert.Equal(t, 1, r.code)
	for _, want := range []string{"object /ccm/objects/sites/bad: breaks schemas/sites.json", "/user:", "/domains/1:", "extra"} {
		assert.Contains(t, r.stderr, want)
	}
	r = admin.run(`{"user": "alice", "domains": ["ok.example"], "v": "x"}`, "object", "put", "sites", "also-bad")
	assert.Equal(t, 1, r.code, "additionalProperties: false")
	r = admin.run(`{"user": "alice", "domains": ["ok.example"]}`, "object", "put", "sites", "good")
	require.Equal(t, 0, r.code, r.stderr)

	// import: everything is checked first, nothing of a bad file is written.
	file := filepath.Join(t.TempDir(), "objects.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"sites": {
		"one": {"user": "bob", "domains": ["one.example"]},
		"two": {"user": "bob", "domains": []},
		"three": {"domains": ["three.example"]}}}`), 0o644))
	r = admin.action("object", "import", file)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "sites/two: breaks schemas/sites.json at /domains:")
	assert.Contains(t, r.stderr, "sites/three: breaks schemas/sites.json at /:")
	resp, err := cli.Get(ctx, "/ccm/objects/sites/one")
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs, "nothing of the import was written")

	// The Go client refuses too.
	sch, err := schemas.Load(dir)
	require.NoError(t, err)
	callers := client.New(cli, client.Options{Schemas: sch})
	err = callers.PutObject(ctx, "sites", "api", map[string]any{"user": "x", "domains": []any{"a.example"}, "php": map[string]any{"max_children": 0}})
	assert.ErrorContains(t, err, "/php/max_children:")
	require.NoError(t, callers.PutObject(ctx, "sites", "api", map[string]any{"user": "x", "domains": []any{"a.example"}}))

	// An agent meets a bad object written past ccm: that object is
	// quarantined, naming the key and the field, and the rest converges.
	n := startAgent(t, etcd, "n", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	assert.Equal(t, "alice\n", n.read("/sites/good.conf"))
	put, err := cli.Put(ctx, "/ccm/objects/sites/sneaky", `{"user": "alice", "domains": "not-a-list"}`)
	require.NoError(t, err)
	s := n.reported(t, put.Header.Revision, api.ResultConverged)
	assert.Equal(t, []string{"sites/sneaky"}, s.Quarantined)
	qs, err := cluster.New(cli, cluster.Options{}).Quarantines(ctx)
	require.NoError(t, err)
	require.Len(t, qs, 1)
	assert.Contains(t, qs[0].Error, "object /ccm/objects/sites/sneaky: breaks schemas/sites.json at /domains:")
	assert.NoFileExists(t, filepath.Join(n.root, "sites/sneaky.conf"))
	_, err = cli.Delete(ctx, "/ccm/objects/sites/sneaky")
	require.NoError(t, err)

	// export writes the import format: an edited copy plans offline.
	r = admin.action("object", "export")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"good"`)
	edited := filepath.Join(t.TempDir(), "edited.json")
	require.NoError(t, os.WriteFile(edited, []byte(strings.Replace(r.stdout, `"user": "alice"`, `"user": "Edited!"`, 1)), 0o644))
	r = admin.action("plan", "--objects", edited)
	assert.Equal(t, 1, r.code, "the edit breaks the schema: %s", r.stdout)
	assert.Contains(t, r.stderr, "sites/good: breaks schemas/sites.json")
	require.NoError(t, os.Remove(filepath.Join(dir, "schemas", "sites.json")))
	r = admin.action("plan", "--objects", edited, "--color", "never")
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stdout, "+Edited!")

	// A broken schema is named by ccm validate.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "schemas", "users.json"), []byte(`{"type": "objekt"}`), 0o644))
	r = admin.action("validate")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, filepath.Join(dir, "schemas", "users.json"))
}
