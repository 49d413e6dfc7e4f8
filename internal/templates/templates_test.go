package templates_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/templates"
)

func TestParseRejectsEnvironmentFunctions(t *testing.T) {
	for _, text := range []string{`{{ env "HOME" }}`, `{{ expandenv "$HOME" }}`} {
		_, err := templates.Parse("t", text)
		assert.ErrorContains(t, err, "reads the agent's environment", text)
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

func TestFunctionsThatAllocateByACountAreBounded(t *testing.T) {
	for _, text := range []string{
		`{{ repeat 10000000000 " " }}`,
		`{{ until 1000000000000 }}`,
		`{{ untilStep 0 1000000000000 1 }}`,
		`{{ seq 1000000000000 }}`,
		`{{ seq 1 1 1000000000000 }}`,
	} {
		tmpl, err := templates.Parse("t", text)
		require.NoError(t, err)
		err = tmpl.Execute(&strings.Builder{}, nil)
		assert.ErrorContains(t, err, "over the limit", text)
	}
	tmpl, err := templates.Parse("t", `{{ repeat 3 "ab" }} {{ until 3 }} {{ seq 3 }}`)
	require.NoError(t, err)
	var b strings.Builder
	require.NoError(t, tmpl.Execute(&b, nil))
	assert.Equal(t, "ababab [0 1 2] 1 2 3", b.String(), "small counts work as in Sprig")
}
