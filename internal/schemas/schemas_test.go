package schemas_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/schemas"
)

// A schema whose $ref refers to itself compiles, and then fails every
// object with nothing but "validation failed": the load refuses it,
// naming the file and the cycle.
func TestLoadRefusesASchemaThatRefersToItself(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "schemas"), 0o755))
	p := filepath.Join(dir, "schemas", "sites.json")
	require.NoError(t, os.WriteFile(p, []byte(`{"$ref":"#"}`), 0o644))
	_, err := schemas.Load(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), p+": a $ref cycle (both /$ref and  resolve to")
	assert.Contains(t, err.Error(), "causing reference cycle)")
}

// A schema comes from a release: its $ref may name a schema beside it,
// never a file elsewhere on the node, a device, or a URL.
func TestASchemaRefersOnlyToSchemasBesideIt(t *testing.T) {
	t.Parallel()
	outside := filepath.Join(t.TempDir(), "string.json")
	require.NoError(t, os.WriteFile(outside, []byte(`{"type":"string"}`), 0o644))
	for _, ref := range []string{"file://" + outside, "file:///dev/zero", "http://127.0.0.1:1/x.json", "../../x.json"} {
		dir := t.TempDir()
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "schemas"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "schemas", "sites.json"),
			[]byte(`{"type":"object","properties":{"v":{"$ref":"`+ref+`"}}}`), 0o644))
		_, err := schemas.Load(dir)
		assert.ErrorContains(t, err, "refused", ref)
	}

	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "schemas"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "schemas", "sites.json"),
		[]byte(`{"type":"object","properties":{"v":{"$ref":"a-word.json"}}}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "schemas", "a-word.json"), []byte(`{"type":"string"}`), 0o644))
	s, err := schemas.Load(dir)
	require.NoError(t, err, "a schema beside it is fine")
	assert.Error(t, s.Validate("sites", map[string]any{"v": 1.0}))
	assert.NoError(t, s.Validate("sites", map[string]any{"v": "x"}))
}
