package render_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"text/template"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
	"github.com/ccm-dev/ccm/internal/templates"
)

// A range rewritten for the element cache renders the same bytes as the
// template as written, before and after objects change, appear and go.
func TestRangesRenderAsWrittenThroughTheElementCache(t *testing.T) {
	texts := []string{
		`{{ range .Objects.sites }}{{ .ID }} {{ .Data.v }};{{ end }}`,
		`{{ range $s := .Objects.sites }}{{ $s.ID }}{{ $x := $s.Data.v }}{{ $x }}{{ end }}`,
		`{{ range $i, $s := .Objects.sites }}{{ $i }}{{ $s.ID }}{{ end }}`,
		`{{ range .Objects.sites }}{{ $.Node.Name }}{{ .ID }}{{ end }}`,
		`{{ range .Objects.sites }}{{ .ID }}{{ else }}none{{ end }}`,
		`{{ range .Objects.sites }}{{ range .Data.list }}{{ . }},{{ end }}|{{ end }}`,
		`{{ with .Objects.sites }}{{ range . }}{{ .ID }}{{ end }}{{ end }}`,
		`{{ range .Objects.sites | reverse }}{{ .ID }}{{ end }}`,
		`{{ range .Objects.sites }}{{ if eq .ID "b" }}{{ break }}{{ end }}{{ .ID }}{{ end }}`,
		`{{ $n := 0 }}{{ range .Objects.sites }}{{ $n = add $n 1 }}{{ end }}{{ $n }}`,
		`{{ range .Objects.sites }}{{ template "line" . }}{{ end }}{{ define "line" }}<{{ .ID }}>{{ end }}`,
		`{{ range .Objects.sites }}{{ .Data.v }}{{ end }}{{ range .Objects.sites }}{{ .ID }}{{ end }}`,
	}
	steps := []map[string]string{
		{"sites/a": `{"v":1,"list":[1,2]}`, "sites/b": `{"v":2,"list":[]}`, "sites/c": `{"v":3,"list":[3]}`},
		{"sites/a": `{"v":1,"list":[1,2]}`, "sites/b": `{"v":20,"list":[9]}`, "sites/c": `{"v":3,"list":[3]}`},
		{"sites/a": `{"v":1,"list":[1,2]}`, "sites/c": `{"v":3,"list":[3]}`, "sites/d": `{"v":4,"list":[]}`},
		{},
	}
	for _, text := range texts {
		t.Run(text, func(t *testing.T) {
			cfg := loadConfig(t, "subscribes: [sites]\nfiles:\n  - path: /x\n    content: '"+text+"'\n")
			plain, err := template.New("plain").Funcs(templates.FuncMap()).Option("missingkey=error").Parse(text)
			require.NoError(t, err)
			cache, root := render.NewCache(), t.TempDir()
			for i, objs := range steps {
				// The unchanged objects keep their revision, as in etcd.
				b := objects.NewBuilder("/ccm", int64(10+i), nil)
				for key, value := range objs {
					rev := int64(5)
					if i > 0 && steps[i-1][key] != value {
						rev = int64(10 + i)
					}
					b.Add("/ccm/objects/"+key, []byte(value), rev)
				}
				snap := b.Snapshot()
				var want strings.Builder
				require.NoError(t, plain.Execute(&want, render.Data{Objects: map[string][]objects.Object{"sites": snap.List("sites")}, Node: render.Node{Name: "n"}, Revision: snap.Revision}))
				out, err := cache.Render(context.Background(), cfg, snap, render.Node{Name: "n"}, root, runkind.Changed)
				require.NoError(t, err, "step %d", i)
				assert.Equal(t, want.String(), string(out.Files[0].Content), "step %d, cached", i)
				out, err = render.Render(cfg, snap, render.Node{Name: "n"}, root)
				require.NoError(t, err, "step %d", i)
				assert.Equal(t, want.String(), string(out.Files[0].Content), "step %d, without a cache", i)
			}
		})
	}
}

// renders counts how often a template printed it: a test's way to see
// which range elements rendered again.
type renders map[string]int

// probe is a value of object data that counts its printing.
type probe struct {
	id    string
	count renders
}

func (p probe) String() string { p.count[p.id]++; return p.id }

// The element cache serves unchanged objects: the body of an unchanged
// object does not execute again, and a changed object renders again.
func TestRangeElementsRenderOnlyWhenTheirObjectChanged(t *testing.T) {
	cfg := loadConfig(t, "subscribes: [sites]\nfiles:\n  - path: /x\n    content: '{{ range .Objects.sites }}{{ .ID }}={{ .Data.p }};{{ end }}'\n")
	cache, root, count := render.NewCache(), t.TempDir(), renders{}
	render1 := func(revB int64) string {
		snap := &objects.Snapshot{Revision: 20, Versions: map[string]int64{"sites": revB}, Types: map[string][]objects.Object{"sites": {
			{Type: "sites", ID: "a", Revision: 5, Data: map[string]any{"p": probe{"a", count}}},
			{Type: "sites", ID: "b", Revision: revB, Data: map[string]any{"p": probe{"b", count}}},
		}}}
		out, err := cache.Render(context.Background(), cfg, snap, render.Node{}, root, runkind.Changed)
		require.NoError(t, err)
		return string(out.Files[0].Content)
	}
	assert.Equal(t, "a=a;b=b;", render1(5))
	assert.Equal(t, "a=a;b=b;", render1(6))
	assert.Equal(t, renders{"a": 1, "b": 2}, count, "a did not change: its line came from the cache; b changed: rendered again")
}

// A body that fails names the template's own file and line, and a body
// over the size budget fails the file.
func TestRangeBodyErrorsAndBudget(t *testing.T) {
	cfg := loadConfig(t, "subscribes: [sites]\nfiles:\n  - path: /x\n    content: '{{ range .Objects.sites }}{{ .Data.nmae }}{{ end }}'\n")
	snap := snapAt(5, map[string]string{"sites/a": `{"name":"x"}`})
	_, err := render.NewCache().Render(context.Background(), cfg, snap, render.Node{}, t.TempDir(), runkind.Changed)
	plain, perr := template.New("content").Option("missingkey=error").Parse(`{{ range .Objects.sites }}{{ .Data.nmae }}{{ end }}`)
	require.NoError(t, perr)
	want := plain.Execute(io.Discard, render.Data{Objects: map[string][]objects.Object{"sites": snap.List("sites")}})
	assert.EqualError(t, err, "render /x: "+want.Error(), "the error reads as the template is written")

	cfg = loadConfig(t, "subscribes: [sites]\nmax_file_size: 1000\nfiles:\n  - path: /x\n    content: '{{ range .Objects.sites }}{{ repeat 600 \"x\" }}{{ end }}'\n")
	objs := map[string]string{}
	for i := range 3 {
		objs[fmt.Sprintf("sites/s%d", i)] = `{}`
	}
	_, err = render.NewCache().Render(context.Background(), cfg, snapAt(5, objs), render.Node{}, t.TempDir(), runkind.Changed)
	assert.ErrorIs(t, err, render.ErrOverBudget)
}
