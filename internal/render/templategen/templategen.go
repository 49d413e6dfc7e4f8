// Package templategen writes random templates for the differential tests
// of the renderer's caches: range, with, $, variables, define/template,
// block, index, if/else, break/continue and pipelines, over a data shaped
// as render.Data with object types "a" and "b" whose data has the fields
// n (a number), s (a string), b (a bool) and l (a list of strings).
// Values are typed as the generator writes them, so that most templates
// execute; those that fail must fail the same way everywhere.
package templategen

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/templates"
)

// Config is the configuration "c" the differential tests render: a file
// /out/<id> from each for every object of type a, and /all from single.
// It reads types a and b.
func Config(each, single string) (*configs.Config, error) {
	cfg := &configs.Config{Name: "c", Subscribes: []string{"a", "b"}, Timeout: configs.DefaultTimeout,
		RenderTimeout: configs.DefaultRenderTimeout, MaxFileSize: configs.DefaultMaxFileSize}
	for _, f := range []struct{ path, forEach, name, text string }{
		{"/out/{{ .Object.ID }}", "a", "each", each},
		{"/all", "", "single", single},
	} {
		path, err := templates.Parse("path", f.path)
		if err != nil {
			return nil, err
		}
		body, err := templates.Parse(f.name, f.text)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, f.text)
		}
		cfg.Files = append(cfg.Files, configs.File{Path: path, ForEach: f.forEach, Body: body, Mode: 0o644})
	}
	return cfg, nil
}

// Change puts or deletes one object of types a and b at rev, under the
// prefix /ccm; live tracks the keys that exist.
func Change(r *rand.Rand, live map[string]bool, rev int64) objects.KV {
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

// Generate writes one template; object says whether .Object is set.
func Generate(r *rand.Rand, object bool) string {
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
