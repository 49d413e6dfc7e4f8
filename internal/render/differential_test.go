package render_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"text/template"

	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/render/templategen"
	"github.com/ccm-dev/ccm/internal/runkind"
	"github.com/ccm-dev/ccm/internal/templates"
)

// The renderer's caches (whole for_each files, range elements) must never
// serve what a plain render would not. This test generates templates from
// a grammar (range, with, $, variables, define/template, block, index, if,
// else, break, pipelines) and random sequences of object puts and deletes,
// fed through the mirror as the agent feeds it. After every step the
// cached, incremental output must equal, byte for byte, a plain
// text/template render of the current objects, and so must a render
// without a cache (what ccm plan does): so ccm plan right after a run
// always finds nothing to change.
func TestCachedRendersMatchPlainTemplates(t *testing.T) {
	seeds := 600
	if testing.Short() {
		seeds = 150
	}
	for seed := range seeds {
		differential(t, uint64(seed), 16)
	}
}

// FuzzCachedRendersMatchPlainTemplates is the long form (make fuzz).
func FuzzCachedRendersMatchPlainTemplates(f *testing.F) {
	for seed := range 8 {
		f.Add(uint64(seed))
	}
	f.Fuzz(func(t *testing.T, seed uint64) { differential(t, seed, 40) })
}

func differential(t *testing.T, seed uint64, steps int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	each := templategen.Generate(r, true)
	single := templategen.Generate(r, false)
	cfg, err := templategen.Config(each, single)
	require.NoError(t, err)
	plainEach, plainSingle := plain(t, each), plain(t, single)
	mirror, cache, root, node := objects.NewMirror("/ccm"), render.NewCache(), t.TempDir(), render.Node{Name: "n1", Labels: map[string]string{"role": "web"}}
	live := map[string]bool{}
	for rev := int64(2); rev < int64(steps)+2; rev++ {
		mirror.Apply([]objects.KV{templategen.Change(r, live, rev)})
		mirror.SetRevision(rev)
		snap := mirror.Snapshot()
		want, wantErr := oracle(plainEach, plainSingle, snap, node)
		explain := func(what string) string {
			return fmt.Sprintf("seed %d, revision %d, %s\nfor_each template:\n%s\nsingle template:\n%s", seed, rev, what, each, single)
		}
		cached, err := cache.Render(context.Background(), cfg, snap, node, root, runkind.Changed)
		compare(t, want, wantErr, cached, err, explain("cached"))
		fresh, err := render.Render(cfg, snap, node, root)
		compare(t, want, wantErr, fresh, err, explain("without a cache"))
	}
}

// plain parses text as text/template does, with the same functions but
// without any rewriting: the reference.
func plain(t *testing.T, text string) *template.Template {
	t.Helper()
	tmpl, err := template.New("plain").Funcs(templates.FuncMap()).Option("missingkey=error").Parse(text)
	require.NoError(t, err, text)
	return tmpl
}

// oracle renders the two files of the test's configuration plainly.
func oracle(each, single *template.Template, snap *objects.Snapshot, node render.Node) (map[string]string, error) {
	data := render.Data{Objects: map[string][]objects.Object{"a": snap.List("a"), "b": snap.List("b")}, Node: node, Revision: snap.Revision}
	out := map[string]string{}
	for _, o := range data.Objects["a"] {
		d := data
		d.Object = &o
		var b strings.Builder
		if err := each.Execute(&b, d); err != nil {
			return nil, err
		}
		out["/out/"+o.ID] = b.String()
	}
	var b strings.Builder
	if err := single.Execute(&b, data); err != nil {
		return nil, err
	}
	out["/all"] = b.String()
	return out, nil
}

func compare(t *testing.T, want map[string]string, wantErr error, got *render.Output, err error, explain string) {
	t.Helper()
	if wantErr != nil {
		if err == nil { // a for_each object that fails is left out
			err = got.Err()
		}
		require.Error(t, err, "a plain render fails (%v): %s", wantErr, explain)
		return
	}
	require.NoError(t, err, explain)
	files := map[string]string{}
	for _, f := range got.Files {
		files[f.Path] = string(f.Content)
	}
	require.Equal(t, want, files, explain)
}
