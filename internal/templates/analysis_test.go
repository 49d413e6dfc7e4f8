package templates

import (
	"testing"
	"text/template"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// What a template reads, as the one analysis finds it. Where the analysis
// cannot follow the data it says Unknown, and the renderer then renders
// every time.
func TestAnalysisFindsWhatATemplateReads(t *testing.T) {
	tests := []struct {
		name, text string
		want       Reads
	}{
		{"the object and the node", `{{ .Object.ID }} {{ .Object.Data.v }} {{ .Node.Name }} {{ .Object.Revision }}`, Reads{}},
		{"a type", `{{ range .Objects.certs }}{{ .ID }}{{ end }}`, Reads{Types: []string{"certs"}}},
		{"types through $", `{{ range .Object.Data.l }}{{ $.Objects.b }}{{ end }}{{ len $.Objects.a }}`, Reads{Types: []string{"a", "b"}}},
		{"with $ rebinds dot to the data", `{{ with $ }}{{ range .Objects.users }}{{ .ID }}{{ end }}{{ end }}`, Reads{Types: []string{"users"}}},
		{"with . at the top", `{{ with . }}{{ .Objects.users }}{{ end }}`, Reads{Types: []string{"users"}}},
		{"a variable holding the data", `{{ $r := . }}{{ range $r.Objects.users }}{{ end }}`, Reads{Types: []string{"users"}}},
		{"a variable holding .Objects", `{{ $o := .Objects }}{{ $o.users }}`, Reads{Types: []string{"users"}}},
		{"an assignment after the read, in a loop", `{{ $x := .Object }}{{ range .Object.Data.l }}{{ $x.Objects.b }}{{ $x = $ }}{{ end }}`, Reads{Types: []string{"b"}}},
		{"a variable that is .Objects or the data", `{{ $x := . }}{{ if .Object }}{{ $x = .Objects }}{{ end }}{{ $x.a }}`, Reads{Unknown: true}},
		{"a defined template given the data", `{{ define "t" }}{{ range .Objects.z }}{{ end }}{{ end }}{{ template "t" . }}`, Reads{Types: []string{"z"}}},
		{"a defined template given $ inside with", `{{ define "t" }}{{ .Objects.z }}{{ end }}{{ with .Object }}{{ template "t" $ }}{{ end }}`, Reads{Types: []string{"z"}}},
		{"a defined template given the object", `{{ define "t" }}{{ .ID }}{{ end }}{{ template "t" .Object }}`, Reads{}},
		{"a block", `{{ block "t" . }}{{ .Objects.q }}{{ end }}`, Reads{Types: []string{"q"}}},
		{"recursion", `{{ define "t" }}{{ template "t" . }}{{ end }}{{ template "t" . }}`, Reads{Unknown: true}},
		{"a defined template given .Objects", `{{ define "t" }}{{ .a }}{{ end }}{{ template "t" .Objects }}`, Reads{Unknown: true}},
		{"the revision", `{{ .Revision }}`, Reads{Revision: true}},
		{"the revision through a variable", `{{ $r := $ }}{{ with .Object }}{{ $r.Revision }}{{ end }}`, Reads{Revision: true}},
		{"index on .Objects", `{{ index .Objects "x" }}`, Reads{Unknown: true}},
		{"index on the data", `{{ index . "Objects" }}`, Reads{Unknown: true}},
		{".Objects piped to a function", `{{ .Objects | len }}`, Reads{Unknown: true}},
		{"the data printed", `{{ . }}`, Reads{Unknown: true}},
		{".Objects printed", `{{ .Objects }}`, Reads{Unknown: true}},
		{"the data to a function", `{{ toJson . }}`, Reads{Unknown: true}},
		{"a range over .Objects", `{{ range $t, $l := .Objects }}{{ $t }}{{ end }}`, Reads{Unknown: true}},
		{"and/or return an argument", `{{ (or .Object $).Objects }}`, Reads{Unknown: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := template.New("x").Funcs(parseFuncs()).Parse(tt.text)
			require.NoError(t, err)
			reads, _ := analyze(tmpl)
			assert.Equal(t, tt.want, reads)
		})
	}
}

// The same walk decides which ranges the renderer may cache: those whose
// body reads nothing but its element.
func TestAnalysisQualifiesOnlySelfContainedRanges(t *testing.T) {
	tests := []struct {
		text    string
		qualify int
	}{
		{`{{ range .Objects.s }}{{ .ID }}{{ end }}`, 1},
		{`{{ range $e := .Objects.s }}{{ $e.ID }}{{ $x := .Data }}{{ $x.k }}{{ end }}`, 1},
		{`{{ range .Objects.s }}{{ $.Object.ID }}{{ end }}`, 0},
		{`{{ $p := "x" }}{{ range .Objects.s }}{{ $p }}{{ end }}`, 0},
		{`{{ $p := "x" }}{{ range .Objects.s }}{{ $p = .ID }}{{ end }}`, 0},
		{`{{ range .Objects.s }}{{ with $ }}{{ .Objects.t }}{{ end }}{{ end }}`, 0},
		{`{{ range .Objects.s }}{{ if .ID }}{{ break }}{{ end }}{{ end }}`, 0},
		{`{{ range .Objects.s }}{{ .ID }}{{ else }}none{{ end }}`, 0},
		{`{{ range $i, $e := .Objects.s }}{{ $i }}{{ end }}`, 0},
		{`{{ range .Objects.s }}{{ range .Data.l }}{{ . }}{{ end }}{{ end }}`, 2},
		{`{{ define "d" }}{{ range .Objects.s }}{{ end }}{{ end }}{{ template "d" . }}`, 0},
	}
	for _, tt := range tests {
		tmpl, err := template.New("x").Funcs(parseFuncs()).Parse(tt.text)
		require.NoError(t, err)
		_, qualify := analyze(tmpl)
		assert.Len(t, qualify, tt.qualify, tt.text)
	}
}
