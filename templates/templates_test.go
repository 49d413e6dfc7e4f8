package templates_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/templates"
)

func TestParseRejectsEnvironmentFunctions(t *testing.T) {
	for _, text := range []string{`{{ env "HOME" }}`, `{{ expandenv "$HOME" }}`} {
		_, err := templates.Parse("t", text)
		assert.ErrorContains(t, err, "not defined", text)
	}
}

func TestMissingKeyIsAnError(t *testing.T) {
	tmpl, err := templates.Parse("t", `{{ .Data.nmae }}`)
	require.NoError(t, err)
	err = tmpl.Execute(&strings.Builder{}, map[string]any{"Data": map[string]any{"name": "x"}})
	assert.ErrorContains(t, err, `map has no entry for key "nmae"`)
}

func ExampleParse() {
	tmpl, _ := templates.Parse("vhost", `server_name {{ .Data.domains | join " " }};`+"\n")
	_ = tmpl.Execute(os.Stdout, map[string]any{"Data": map[string]any{"domains": []any{"example.com", "www.example.com"}}})
	// Output: server_name example.com www.example.com;
}
