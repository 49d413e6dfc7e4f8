package schemas_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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

// A schema that breaks its draft's meta-schema is refused at load, naming
// the file and the keyword, however early in the process it is the first
// one compiled (TestTheDraftsCompileOnFirstUse runs it alone).
func TestASchemaThatBreaksItsDraftIsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ schema, want string }{
		{`{"type":5}`, "/type"},
		{`{"type":"object","properties":{"v":{"minLength":"x"}}}`, "/properties/v/minLength"},
		{`{"$schema":"http://json-schema.org/draft-07/schema#","required":"v"}`, "/required"},
	} {
		dir := t.TempDir()
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "schemas"), 0o755))
		p := filepath.Join(dir, "schemas", "sites.json")
		require.NoError(t, os.WriteFile(p, []byte(tc.schema), 0o644))
		_, err := schemas.Load(dir)
		require.Error(t, err, tc.schema)
		assert.Contains(t, err.Error(), p, tc.schema)
		assert.Contains(t, err.Error(), tc.want, tc.schema)
	}
}

// The drafts' meta-schemas compile when the first schema does, not at
// every ccm command's start (third_party/jsonschema/README.ccm.md): the
// package's initialisation allocates next to nothing, and a fresh process
// whose first compile is a broken schema still refuses it.
func TestTheDraftsCompileOnFirstUse(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestASchemaThatBreaksItsDraftIsRefused$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	m := regexp.MustCompile(`(?m)^init github.com/santhosh-tekuri/jsonschema/v6 @.* clock, ([0-9]+) bytes`).FindSubmatch(out)
	require.NotNil(t, m, "no init line for jsonschema in:\n%s", out)
	bytes, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	// Upstream's init compiles every draft's meta-schema: 1.7 MB.
	assert.Less(t, bytes, 100_000, "jsonschema's init allocates %d bytes: it compiles the meta-schemas again", bytes)
}
