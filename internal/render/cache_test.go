package render_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

func snapAt(rev int64, objs map[string]string) *objects.Snapshot {
	b := objects.NewBuilder("/ccm", rev, nil)
	for key, value := range objs {
		b.Add("/ccm/objects/"+key, []byte(value), rev)
	}
	return b.Snapshot()
}

func TestCacheServesOnlyTemplatesThatCannotHaveChanged(t *testing.T) {
	tests := []struct {
		name    string
		content string
		cached  bool
	}{
		{"object only", `{{ .Object.ID }} {{ .Object.Data.v }} {{ .Node.Name }}`, true},
		{"range over own data", `{{ range .Object.Data.list }}{{ . }}{{ end }}`, true},
		{"reads another type", `{{ range $c := .Objects.certs }}{{ if eq $c.Data.site $.Object.ID }}{{ $c.ID }}{{ end }}{{ end }}`, true},
		{"reads the revision", `{{ .Revision }}`, false},
		{"reads every type", `{{ len .Objects }}`, false},
		{"hands the whole data to a function", `{{ toJson . }}`, false},
	}
	objs := map[string]string{"sites/a": `{"v":1,"list":[1]}`, "certs/c": `{"site":"a"}`}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadConfig(t, "subscribes: [sites, certs]\nfiles:\n  - path: /x/{{ .Object.ID }}\n    for_each: sites\n    content: '"+tt.content+"'\n")
			cache, root := render.NewCache(), t.TempDir()
			render1 := func(rev int64, kind runkind.Kind) []byte {
				out, err := cache.Render(context.Background(), cfg, snapAt(rev, objs), render.Node{Name: "n"}, root, kind)
				require.NoError(t, err)
				require.Len(t, out.Files, 1)
				return out.Files[0].Content
			}
			first := render1(5, runkind.Changed)
			second := render1(5, runkind.Changed)
			assert.Equal(t, tt.cached, &first[0] == &second[0], "same snapshot: served from the cache")
			third := render1(6, runkind.Changed)
			assert.NotSame(t, &second[0], &third[0], "the object changed (revision 6): rendered again")
			fourth := render1(6, runkind.Full)
			assert.NotSame(t, &third[0], &fourth[0], "a full run renders everything")
		})
	}
}

func TestCacheNoticesAChangeInATypeItReads(t *testing.T) {
	cfg := loadConfig(t, "subscribes: [sites, certs]\nfiles:\n  - path: /x/{{ .Object.ID }}\n    for_each: sites\n    content: '{{ range .Objects.certs }}{{ .ID }} {{ end }}'\n")
	cache, root := render.NewCache(), t.TempDir()
	b := objects.NewBuilder("/ccm", 3, nil)
	b.Add("/ccm/objects/sites/a", []byte(`{}`), 2)
	b.Add("/ccm/objects/certs/c1", []byte(`{}`), 2)
	out, err := cache.Render(context.Background(), cfg, b.Snapshot(), render.Node{}, root, runkind.Changed)
	require.NoError(t, err)
	assert.Equal(t, "c1 ", string(out.Files[0].Content))

	b = objects.NewBuilder("/ccm", 4, nil)
	b.Add("/ccm/objects/sites/a", []byte(`{}`), 2) // the site itself did not change
	b.Add("/ccm/objects/certs/c1", []byte(`{}`), 2)
	b.Add("/ccm/objects/certs/c2", []byte(`{}`), 4)
	out, err = cache.Render(context.Background(), cfg, b.Snapshot(), render.Node{}, root, runkind.Changed)
	require.NoError(t, err)
	assert.Equal(t, "c1 c2 ", string(out.Files[0].Content))
}

// A for_each file that reaches another type through `with $` (or a
// variable holding the data) depends on that type: adding users renders
// it again, as ccm plan would.
func TestCacheFollowsTypesReadThroughTheData(t *testing.T) {
	for _, content := range []string{
		`{{ with $ }}users:{{ range .Objects.users }} {{ .ID }}{{ end }}{{ end }}`,
		`{{ $all := . }}users:{{ range $all.Objects.users }} {{ .ID }}{{ end }}`,
		`{{ define "u" }}users:{{ range .Objects.users }} {{ .ID }}{{ end }}{{ end }}{{ template "u" . }}`,
	} {
		cfg := loadConfig(t, "subscribes: [sites, users]\nfiles:\n  - path: /x/{{ .Object.ID }}\n    for_each: sites\n    content: '"+content+"'\n")
		cache, root := render.NewCache(), t.TempDir()
		objs := map[string]string{"sites/s1": `{}`, "users/u1": `{}`}
		out, err := cache.Render(context.Background(), cfg, snapAt(5, objs), render.Node{}, root, runkind.Changed)
		require.NoError(t, err)
		assert.Equal(t, "users: u1", string(out.Files[0].Content), content)

		b := objects.NewBuilder("/ccm", 7, nil)
		b.Add("/ccm/objects/sites/s1", []byte(`{}`), 5) // the site itself did not change
		b.Add("/ccm/objects/users/u1", []byte(`{}`), 5)
		b.Add("/ccm/objects/users/u2", []byte(`{}`), 6)
		b.Add("/ccm/objects/users/u3", []byte(`{}`), 7)
		out, err = cache.Render(context.Background(), cfg, b.Snapshot(), render.Node{}, root, runkind.Changed)
		require.NoError(t, err)
		assert.Equal(t, "users: u1 u2 u3", string(out.Files[0].Content), content)
	}
}

// Configurations share the snapshot's objects: one that tries to change
// an object's data fails, naming why, and the next renders the data as
// stored.
func TestAConfigurationCannotChangeWhatAnotherRenders(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c2.yaml"), []byte("files:\n  - path: /c2/{{ .Object.ID }}\n    for_each: sites\n    content: '{{ $_ := set .Object.Data \"k\" \"mutated-by-c2\" }}{{ .Object.Data.k }}'\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c3.yaml"), []byte("files:\n  - path: /c3/{{ .Object.ID }}\n    for_each: sites\n    content: '{{ .Object.ID }}={{ .Object.Data.k }}'\n"), 0o644))
	set, err := configs.Load(dir)
	require.NoError(t, err)
	snap := snapAt(5, map[string]string{"sites/s3": `{"k":"stored"}`})
	cache, root := render.NewCache(), t.TempDir()
	bad, err := cache.Render(context.Background(), set.Configs["c2"], snap, render.Node{}, root, runkind.Changed)
	require.NoError(t, err)
	assert.ErrorContains(t, bad.Err(), "set: cannot change a map[string]interface {} the template did not make: object data is shared")
	out, err := cache.Render(context.Background(), set.Configs["c3"], snap, render.Node{}, root, runkind.Changed)
	require.NoError(t, err)
	assert.Equal(t, "s3=stored", string(out.Files[0].Content))
}

func TestARenderThatSharesTheLastOnesPathsStillFindsAPathRenderedTwice(t *testing.T) {
	cfg := loadConfig(t, "subscribes: [sites]\nfiles:\n  - path: '/x/{{ .Object.Data.name }}'\n    for_each: sites\n    content: '{{ .Object.ID }}'\n")
	cache, root := render.NewCache(), t.TempDir()
	objs := map[string]string{"sites/a": `{"name":"a"}`, "sites/b": `{"name":"b"}`, "sites/c": `{"name":"c"}`}
	render1 := func(rev int64, kind runkind.Kind) *render.Output {
		b := objects.NewBuilder("/ccm", rev, nil)
		for key, value := range objs {
			r := int64(2)
			if key == "sites/c" {
				r = rev
			}
			b.Add("/ccm/objects/"+key, []byte(value), r)
		}
		out, err := cache.Render(context.Background(), cfg, b.Snapshot(), render.Node{}, root, kind)
		require.NoError(t, err)
		return out
	}
	first := render1(3, runkind.Full)
	second := render1(3, runkind.Changed)
	assert.True(t, second.SameFiles(first), "the same files: the set of paths is shared")
	second.HoldBack("sites/b")
	assert.False(t, second.Has("/x/b"))
	assert.True(t, first.Has("/x/b"), "a hold changes its own output's paths alone")
	assert.False(t, second.SameFiles(first))

	objs["sites/c"] = `{"name":"a"}` // c now renders a's path
	third := render1(4, runkind.Changed)
	assert.False(t, third.SameFiles(first))
	require.Len(t, third.Failed, 1)
	assert.Equal(t, "c", third.Failed[0].ID)
	assert.ErrorContains(t, third.Failed[0].Err, "file /x/a is rendered twice")
	assert.True(t, third.Has("/x/a") && third.Has("/x/b") && !third.Has("/x/c"))
}
