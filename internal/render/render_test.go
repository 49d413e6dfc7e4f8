package render_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// loadConfig loads a one-configuration directory.
func loadConfig(t *testing.T, yaml string) *configs.Config {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c.yaml"), []byte(yaml), 0o644))
	set, err := configs.Load(dir)
	require.NoError(t, err)
	return set.Configs["c"]
}

func snapshot(objs map[string]string) *objects.Snapshot {
	b := objects.NewBuilder("/ccm", 9, nil)
	for key, value := range objs {
		b.Add("/ccm/objects/"+key, []byte(value), 5)
	}
	return b.Snapshot()
}

const vhosts = `
subscribes: [sites]
files:
  - path: /etc/nginx/{{ .Object.Data.dir }}/{{ .Object.ID }}.conf
    for_each: sites
    content: "server_name {{ .Object.Data.name }}; # {{ len .Objects.sites }} sites on {{ .Node.Name }} at {{ .Revision }}\n"
`

func TestRenderForEachIsSortedAndDeterministic(t *testing.T) {
	cfg := loadConfig(t, vhosts)
	snap := snapshot(map[string]string{
		"sites/b": `{"dir":"sites","name":"b.example"}`,
		"sites/a": `{"dir":"sites","name":"a.example"}`,
	})
	root := t.TempDir()
	out, err := render.Render(cfg, snap, render.Node{Name: "n1"}, root)
	require.NoError(t, err)
	require.Len(t, out.Files, 2)
	assert.Equal(t, "/etc/nginx/sites/a.conf", out.Files[0].Path)
	assert.Equal(t, filepath.Join(root, "etc/nginx/sites/a.conf"), out.Files[0].Real)
	assert.Equal(t, "server_name a.example; # 2 sites on n1 at 9\n", string(out.Files[0].Content))
	again, err := render.Render(cfg, snap, render.Node{Name: "n1"}, root)
	require.NoError(t, err)
	assert.Equal(t, out, again)
}

func TestRenderEmptyTypeIsPresent(t *testing.T) {
	cfg := loadConfig(t, "subscribes: [sites]\nfiles:\n  - path: /x\n    content: '{{ len .Objects.sites }}'\n")
	out, err := render.Render(cfg, snapshot(nil), render.Node{}, t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, "0", string(out.Files[0].Content))
}

func TestRenderErrorsNameTheObject(t *testing.T) {
	cfg := loadConfig(t, vhosts)
	tests := []struct {
		name string
		objs map[string]string
		want string
	}{
		{"missing key", map[string]string{"sites/a": `{"dir":"sites"}`},
			`render /etc/nginx/sites/a.conf (object sites/a): template: content:1:22: executing "content" at <.Object.Data.name>: map has no entry for key "name"`},
		{"malformed object", map[string]string{"sites/a": `{"dir":"sites","name":"a"}`, "sites/bad": `[]`},
			"object /ccm/objects/sites/bad: value is a JSON array, want a JSON object"},
		{"traversal", map[string]string{"sites/a": `{"dir":"../../etc","name":"a"}`},
			`path "/etc/nginx/../../etc/a.conf" (object sites/a): is not clean (it would be /etc/a.conf): escapes the root`},
		{"absolute path from data", map[string]string{"sites/a": `{"dir":"/etc/passwd","name":"a"}`},
			`path "/etc/nginx//etc/passwd/a.conf" (object sites/a): is not clean (it would be /etc/nginx/etc/passwd/a.conf): escapes the root`},
		{"NUL", map[string]string{"sites/a": `{"dir":"x\u0000y","name":"a"}`},
			`path "/etc/nginx/x\x00y/a.conf" (object sites/a): contains a control character`},
		{"newline", map[string]string{"sites/a": `{"dir":"x\ny","name":"a"}`},
			`path "/etc/nginx/x\ny/a.conf" (object sites/a): contains a control character`},
		{"overlong name", map[string]string{"sites/a": `{"dir":"` + strings.Repeat("d", 256) + `","name":"a"}`},
			"has a name longer than 255 bytes"},
		{"two objects one path", map[string]string{"sites/a": `{"dir":"x","name":"a"}`, "sites/b": `{"dir":"x/a.conf/..","name":"b"}`},
			"is not clean"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := render.Render(cfg, snapshot(tt.objs), render.Node{}, t.TempDir())
			require.NoError(t, err, "an object's error is that object's alone")
			assert.ErrorContains(t, out.Err(), tt.want)
		})
	}
}

func TestRenderRejectsTheSamePathTwice(t *testing.T) {
	cfg := loadConfig(t, "files:\n  - path: /x/{{ .Object.Data.f }}\n    for_each: s\n    content: x\n")
	out, err := render.Render(cfg, snapshot(map[string]string{"s/a": `{"f":"same"}`, "s/b": `{"f":"same"}`}), render.Node{}, t.TempDir())
	require.NoError(t, err)
	assert.EqualError(t, out.Err(), "file /x/same is rendered twice (object s/b)")
	assert.Equal(t, []string{"/x/same"}, paths(out), "the first object keeps its file")
}

func TestConfineRejectsSymlinksLeavingTheRoot(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "etc", "evil")))
	require.NoError(t, os.Symlink("/nonexistent-ccm", filepath.Join(root, "etc", "dangling")))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "srv", "real"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(root, "srv", "real"), filepath.Join(root, "etc", "inside")))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "target"), nil, 0o644))
	require.NoError(t, os.Symlink(filepath.Join(outside, "target"), filepath.Join(root, "etc", "file-link")))

	_, err := render.Confine(root, "/etc/evil/x.conf")
	assert.ErrorIs(t, err, render.ErrEscapes)
	assert.ErrorContains(t, err, "resolves to "+outside)
	_, err = render.Confine(root, "/etc/evil/deeper/x.conf")
	assert.ErrorIs(t, err, render.ErrEscapes, "a missing directory below the symlink does not hide it")
	_, err = render.Confine(root, "/etc/dangling/x.conf")
	assert.ErrorContains(t, err, "is a dangling symlink")
	_, err = render.Confine(root, "/etc/file-link")
	assert.NoError(t, err, "a symlink at the path itself is never followed: the applier moves it aside")

	real, err := render.Confine(root, "/etc/inside/x.conf")
	require.NoError(t, err, "a symlink that stays inside the root is fine")
	assert.Equal(t, filepath.Join(root, "etc/inside/x.conf"), real)
}

func TestARenderOverItsBudgetFailsWithAClearError(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"size", "files: [{path: /x, content: '{{ range until 1000000 }}{{ repeat 100 \"x\" }}{{ end }}'}]\nmax_file_size: 1MiB\n",
			"over the render budget: more than 1048576 bytes (max_file_size)"},
		{"time", "files: [{path: /x, content: '{{ range until 1000000 }}{{ range until 100000 }}{{ end }}x{{ end }}'}]\nrender_timeout: 500ms\n",
			"over the render budget: still rendering after 500ms (render_timeout)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadConfig(t, tt.yaml)
			_, err := render.NewCache().Render(context.Background(), cfg, snapshot(nil), render.Node{}, t.TempDir(), runkind.Full)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "render /x: ", "the error names the file")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestATemplateThatCannotBeStoppedIsReportedStuck(t *testing.T) {
	cfg := loadConfig(t, "files: [{path: /x, content: '{{ range $i := 1000000000000 }}{{ end }}'}]\nrender_timeout: 200ms\n")
	start := time.Now()
	_, err := render.NewCache().Render(context.Background(), cfg, snapshot(nil), render.Node{}, t.TempDir(), runkind.Full)
	require.ErrorIs(t, err, render.ErrStuck)
	assert.Less(t, time.Since(start), time.Minute, "the caller gets control back")
	// The goroutine spins on: the process must exit (the agent does).
}
