package render_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"text/template"

	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/render"
	"github.com/ccm-dev/ccm/templates"
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
	each := generate(r, true)
	single := generate(r, false)
	cfg := &configs.Config{Name: "c", Subscribes: []string{"a", "b"}, RenderTimeout: configs.DefaultRenderTimeout, MaxFileSize: configs.DefaultMaxFileSize}
	cfg.Files = []configs.File{
		{Path: parse(t, "path", "/out/{{ .Object.ID }}"), ForEach: "a", Body: parse(t, "each", each), Mode: 0o644},
		{Path: parse(t, "path", "/all"), Body: parse(t, "single", single), Mode: 0o644},
	}
	plainEach, plainSingle := plain(t, each), plain(t, single)
	mirror, cache, root, node := objects.NewMirror("/ccm"), render.NewCache(), t.TempDir(), render.Node{Name: "n1", Labels: map[string]string{"role": "web"}}
	live := map[string]bool{}
	for rev := int64(2); rev < int64(steps)+2; rev++ {
		mirror.Apply([]objects.KV{change(r, live, rev)})
		mirror.SetRevision(rev)
		snap := mirror.Snapshot()
		want, wantErr := oracle(plainEach, plainSingle, snap, node)
		explain := func(what string) string {
			return fmt.Sprintf("seed %d, revision %d, %s\nfor_each template:\n%s\nsingle template:\n%s", seed, rev, what, each, single)
		}
		cached, err := cache.Render(context.Background(), cfg, snap, node, root, false)
		compare(t, want, wantErr, cached, err, explain("cached"))
		fresh, err := render.Render(cfg, snap, node, root)
		compare(t, want, wantErr, fresh, err, explain("without a cache"))
	}
}

func parse(t *testing.T, name, text string) *templates.Template {
	t.Helper()
	tmpl, err := templates.Parse(name, text)
	require.NoError(t, err, text)
	return tmpl
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

// change puts or deletes one object at rev.
func change(r *rand.Rand, live map[string]bool, rev int64) objects.KV {
	ids := []string{"a/a1", "a/a2", "a/a3", "a/a4", "b/b1", "b/b2", "b/b3"}
	key := ids[r.IntN(len(ids))]
	if live[key] && r.IntN(4) == 0 {
		delete(live, key)
		return objects.KV{Key: "/ccm/objects/" + key, ModRevision: rev, Deleted: true}
	}
	live[key] = true
	words := []string{"p", "q", "r"}
	data := map[string]any{"n": r.IntN(3), "s": words[r.IntN(len(words))], "b": r.IntN(2) == 0, "l": words[:r.IntN(len(words)+1)]}
	value, _ := json.Marshal(data)
	return objects.KV{Key: "/ccm/objects/" + key, Value: value, ModRevision: rev}
}

// A template generator. Values have a type, so that what it writes
// mostly executes: the data (root), an object, a list of objects, a string.
type vtype int

const (
	tRoot vtype = iota
	tObj
	tList
	tStr
)

type variable struct {
	name string
	typ  vtype
}

type generator struct {
	r       *rand.Rand
	n       int        // names made so far
	vars    []variable // in scope
	dollar  vtype      // what $ is in the template being written
	object  bool       // $ is the data and has an .Object
	defines []string
	inRange int
}

// generate writes one template; object says whether .Object is set.
func generate(r *rand.Rand, object bool) string {
	g := &generator{r: r, dollar: tRoot, object: object}
	body := g.block(tRoot, 3)
	return body + strings.Join(g.defines, "")
}

func (g *generator) name(prefix string) string {
	g.n++
	return fmt.Sprintf("%s%d", prefix, g.n)
}

// block writes one to three statements with dot of type dot; the
// variables it declares end with it.
func (g *generator) block(dot vtype, depth int) string {
	mark := len(g.vars)
	var b strings.Builder
	for range 1 + g.r.IntN(3) {
		b.WriteString(g.statement(dot, depth))
	}
	g.vars = g.vars[:mark]
	return b.String()
}

func (g *generator) statement(dot vtype, depth int) string {
	if depth <= 0 {
		if g.r.IntN(2) == 0 {
			return []string{"x", "\n", ";", " "}[g.r.IntN(4)]
		}
		return "{{ " + g.str(dot) + " }}"
	}
	switch g.r.IntN(11) {
	case 0:
		return "-"
	case 1, 2:
		return "{{ " + g.str(dot) + " }}"
	case 3:
		return g.rangeOver(dot, depth)
	case 4:
		if e, ok := g.root(dot); ok {
			return "{{ with " + e + " }}" + g.block(tRoot, depth-1) + "{{ end }}"
		}
		return "{{ with " + g.obj(dot) + " }}" + g.block(tObj, depth-1) + "{{ else }}none{{ end }}"
	case 5:
		return "{{ if " + g.cond(dot) + " }}" + g.block(dot, depth-1) + "{{ else }}" + g.block(dot, depth-1) + "{{ end }}"
	case 6:
		return g.declare(dot)
	case 7:
		return g.assign(dot)
	case 8:
		return g.call(dot, depth)
	case 9:
		if g.inRange > 0 {
			return "{{ if " + g.cond(dot) + " }}{{ " + []string{"break", "continue"}[g.r.IntN(2)] + " }}{{ end }}"
		}
		return "{{ " + g.str(dot) + " | upper | printf \"<%s>\" }}"
	default:
		return "{{ range " + field(g.obj(dot), "Data.l") + " }}{{ . }},{{ end }}"
	}
}

func (g *generator) rangeOver(dot vtype, depth int) string {
	list := g.list(dot)
	g.inRange++
	defer func() { g.inRange-- }()
	switch g.r.IntN(4) {
	case 0:
		v := g.name("$e")
		g.vars = append(g.vars, variable{v, tObj})
		body := g.block(tObj, depth-1)
		g.vars = g.vars[:len(g.vars)-1]
		return "{{ range " + v + " := " + list + " }}" + body + "{{ end }}"
	case 1:
		i, v := g.name("$i"), g.name("$e")
		g.vars = append(g.vars, variable{v, tObj})
		body := g.block(tObj, depth-1)
		g.vars = g.vars[:len(g.vars)-1]
		return "{{ range " + i + ", " + v + " := " + list + " }}{{ " + i + " }}" + body + "{{ end }}"
	case 2:
		return "{{ range " + list + " }}" + g.block(tObj, depth-1) + "{{ else }}empty{{ end }}"
	default:
		return "{{ range " + list + " }}" + g.block(tObj, depth-1) + "{{ end }}"
	}
}

func (g *generator) declare(dot vtype) string {
	v := g.name("$v")
	var e string
	typ := vtype(g.r.IntN(4))
	switch typ {
	case tRoot:
		var ok bool
		if e, ok = g.root(dot); !ok {
			typ, e = tStr, g.str(dot)
		}
	case tObj:
		e = g.obj(dot)
	case tList:
		e = g.list(dot)
	default:
		e = g.str(dot)
	}
	g.vars = append(g.vars, variable{v, typ})
	return "{{ " + v + " := " + e + " }}"
}

func (g *generator) assign(dot vtype) string {
	if len(g.vars) == 0 {
		return g.declare(dot)
	}
	v := g.vars[g.r.IntN(len(g.vars))]
	var e string
	switch v.typ {
	case tRoot:
		e, _ = g.root(dot)
	case tObj:
		e = g.obj(dot)
	case tList:
		e = g.list(dot)
	default:
		e = g.str(dot)
	}
	return "{{ " + v.name + " = " + e + " }}"
}

// call writes {{ template }} (or {{ block }}) of a new define whose dot is
// the data or an object.
func (g *generator) call(dot vtype, depth int) string {
	name := g.name("d")
	arg, typ := g.obj(dot), tObj
	if e, ok := g.root(dot); ok && g.r.IntN(2) == 0 {
		arg, typ = e, tRoot
	}
	saved := *g
	g.vars, g.dollar, g.object, g.inRange = nil, typ, typ == tRoot && g.object, 0 // a define is outside every range
	body := g.block(typ, depth-1)
	g.vars, g.dollar, g.object, g.inRange = saved.vars, saved.dollar, saved.object, saved.inRange
	if g.r.IntN(3) == 0 {
		return "{{ block \"" + name + "\" " + arg + " }}" + body + "{{ end }}"
	}
	g.defines = append(g.defines, "{{ define \""+name+"\" }}"+body+"{{ end }}")
	return "{{ template \"" + name + "\" " + arg + " }}"
}

// pick returns a variable of type typ, if one is in scope.
func (g *generator) pick(typ vtype) (string, bool) {
	var names []string
	for _, v := range g.vars {
		if v.typ == typ {
			names = append(names, v.name)
		}
	}
	if len(names) == 0 {
		return "", false
	}
	return names[g.r.IntN(len(names))], true
}

// root returns an expression for the data, if one can be written here.
func (g *generator) root(dot vtype) (string, bool) {
	var options []string
	if dot == tRoot {
		options = append(options, ".")
	}
	if g.dollar == tRoot {
		options = append(options, "$")
	}
	if v, ok := g.pick(tRoot); ok {
		options = append(options, v)
	}
	if len(options) == 0 {
		return "", false
	}
	return options[g.r.IntN(len(options))], true
}

func (g *generator) list(dot vtype) string {
	if v, ok := g.pick(tList); ok && g.r.IntN(3) == 0 {
		return v
	}
	typ := []string{"a", "b"}[g.r.IntN(2)]
	if e, ok := g.root(dot); ok {
		switch g.r.IntN(5) {
		case 0:
			return fmt.Sprintf("(index %s %q)", field(e, "Objects"), typ)
		case 1:
			return fmt.Sprintf("(%s | reverse)", field(e, "Objects."+typ))
		}
		return field(e, "Objects."+typ)
	}
	return "(list)"
}

func (g *generator) obj(dot vtype) string {
	var options []string
	if dot == tObj {
		options = append(options, ".")
	}
	if g.dollar == tObj {
		options = append(options, "$")
	}
	if g.object {
		options = append(options, "$.Object")
		if dot == tRoot {
			options = append(options, ".Object")
		}
	}
	if v, ok := g.pick(tObj); ok {
		options = append(options, v)
	}
	if e, ok := g.root(dot); ok && g.r.IntN(3) == 0 {
		typ := []string{"a", "b"}[g.r.IntN(2)]
		options = append(options, fmt.Sprintf("(%s | first)", field(e, "Objects."+typ)))
	}
	if len(options) == 0 {
		return "(dict \"ID\" \"none\" \"Revision\" 0 \"Data\" (dict \"n\" 0 \"s\" \"\" \"b\" false \"l\" (list)))"
	}
	return options[g.r.IntN(len(options))]
}

func (g *generator) str(dot vtype) string {
	if v, ok := g.pick(tStr); ok && g.r.IntN(4) == 0 {
		return v
	}
	o := g.obj(dot)
	switch g.r.IntN(9) {
	case 0:
		return field(o, "ID")
	case 1:
		return field(o, "Data.s")
	case 2:
		return "(" + field(o, "Data.n") + " | toString)"
	case 3:
		return fmt.Sprintf("(printf \"%%v/%%v\" %s %s)", field(o, "Data.b"), field(o, "Revision"))
	case 4:
		return "(len " + g.list(dot) + " | toString)"
	case 5:
		if e, ok := g.root(dot); ok {
			return field(e, "Node.Name")
		}
	case 6:
		if e, ok := g.root(dot); ok && g.r.IntN(3) == 0 {
			return field(e, "Revision")
		}
	case 7:
		return fmt.Sprintf("(index %s %q)", field(o, "Data"), "s")
	}
	return "(" + field(o, "Data.l") + " | join \"+\")"
}

func (g *generator) cond(dot vtype) string {
	switch g.r.IntN(3) {
	case 0:
		return "eq " + field(g.obj(dot), "Data.n") + " 1"
	case 1:
		return "gt (len " + g.list(dot) + ") 1"
	}
	return field(g.obj(dot), "Data.b")
}

// field appends a field path to an expression.
func field(e, path string) string {
	if e == "." {
		return "." + path
	}
	if strings.HasPrefix(e, "(dict") {
		return "(index " + e + " " + quotePath(path) + ")"
	}
	return e + "." + path
}

// quotePath turns Data.s into "Data" "s" for index on a made-up object.
func quotePath(path string) string {
	parts := strings.Split(path, ".")
	for i, p := range parts {
		parts[i] = fmt.Sprintf("%q", p)
	}
	return strings.Join(parts, " ")
}
