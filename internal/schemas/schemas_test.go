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
