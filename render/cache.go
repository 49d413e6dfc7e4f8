package render

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"text/template"
	"text/template/parse"

	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/templates"
)

// Cache remembers for_each output per object revision, so a run after one
// object changed renders one file, not ten thousand. It only serves
// templates whose output depends only on their object, the node and the
// types they read through .Objects (see depWalker): an entry is valid while
// the object's revision and those types' versions are unchanged. Any other
// template renders every time. A Cache is used by
// one goroutine at a time (the applier's runs are serialised).
type Cache struct {
	// configs maps a configuration name to the entries of its last render;
	// each render replaces them, which drops deleted objects and the files
	// of configurations that were reloaded.
	configs  map[string]*configCache
	tmplDeps map[*template.Template]templateDeps // what each template reads, found once
	// abandoned is set once a render was left running (stuck, or still
	// running at shutdown): it may still touch the maps, so no other
	// render may start.
	abandoned atomic.Bool
}

// configCache holds one configuration's entries. Entries are updated in
// place; those a render did not touch (deleted objects, reloaded files) are
// swept after it.
type configCache struct {
	entries map[cacheKey]*cacheEntry
	ranges  map[*template.Template]*rangeOutputs // element outputs of rewritten ranges, by body
	gen     uint64
}

type cacheKey struct {
	file *configs.File // identity changes when the directory is reloaded
	id   string
}

type cacheEntry struct {
	revision int64   // of the object
	versions []int64 // of the types the templates read, in deps order
	file     File
	gen      uint64 // the last render that used the entry
}

// NewCache returns an empty Cache.
func NewCache() *Cache {
	return &Cache{configs: map[string]*configCache{}, tmplDeps: map[*template.Template]templateDeps{}}
}

// Render is render.Render with the cache. With fresh, every file renders
// (and refills the cache): full runs trust nothing. It returns when ctx
// ends, and with ErrStuck when a template runs past its render_timeout
// without writing (see budget.watch).
func (c *Cache) Render(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, node Node, root string, fresh bool) (*Output, error) {
	if c.abandoned.Load() {
		return nil, fmt.Errorf("%w: an earlier render still runs; the process must restart", ErrStuck)
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	b := newBudget(cfg)
	out, err, abandoned := b.watch(ctx, func() (*Output, error) { return c.render(cfg, snap, node, root, fresh, b) })
	if abandoned {
		c.abandoned.Store(true)
	}
	return out, err
}

func (c *Cache) render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string, fresh bool, b budget) (*Output, error) {
	cc := c.configs[cfg.Name]
	if cc == nil || fresh {
		cc = &configCache{entries: map[cacheKey]*cacheEntry{}, ranges: map[*template.Template]*rangeOutputs{}}
		c.configs[cfg.Name] = cc
	}
	cc.gen++
	r := &renderer{cache: cc, deps: c, budget: b}
	out, err := r.render(cfg, snap, node, root)
	if err != nil {
		delete(c.configs, cfg.Name)
		return nil, err
	}
	if len(cc.entries) > r.used {
		for k, e := range cc.entries {
			if e.gen != cc.gen {
				delete(cc.entries, k)
			}
		}
	}
	for body, outs := range cc.ranges {
		for k, e := range outs.elems {
			if e.gen != cc.gen {
				delete(outs.elems, k)
			}
		}
		if len(outs.elems) == 0 {
			delete(cc.ranges, body)
		}
	}
	return out, nil
}

// deps returns the object types both templates of f read through
// .Objects, or ok=false when their output may depend on more than the
// current object, those types and the node.
func (c *Cache) deps(f *configs.File) ([]string, bool) {
	pd, pok := c.templateDeps(f.Path)
	bd, bok := c.templateDeps(f.Body)
	return append(append([]string(nil), pd...), bd...), pok && bok
}

func (c *Cache) templateDeps(t *template.Template) ([]string, bool) {
	if d, ok := c.tmplDeps[t]; ok {
		return d.types, d.ok
	}
	w := depWalker{types: map[string]bool{}, ok: true}
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			w.ok = false
			continue
		}
		w.node(tt.Tree.Root, templates.IsRangeBody(tt))
	}
	d := templateDeps{ok: w.ok}
	for typ := range w.types {
		d.types = append(d.types, typ)
	}
	sort.Strings(d.types)
	c.tmplDeps[t] = d
	return d.types, d.ok
}

type templateDeps struct {
	types []string
	ok    bool
}

// depWalker finds what a template reads. Reads of .Objects.<type> are
// dependencies; .Objects as a whole, .Revision, {{ template }} and a bare
// "." outside range/with (the whole data, handed to a function) make the
// output depend on anything, so the template is not cached.
type depWalker struct {
	types map[string]bool
	ok    bool
}

func (w *depWalker) ident(ident []string) {
	if len(ident) == 0 {
		return
	}
	switch ident[0] {
	case "Revision":
		w.ok = false
	case "Objects":
		if len(ident) < 2 {
			w.ok = false
			return
		}
		w.types[ident[1]] = true
	}
}

// node walks n; rebound says whether "." was rebound by range or with.
func (w *depWalker) node(n parse.Node, rebound bool) {
	switch n := n.(type) {
	case *parse.FieldNode:
		if !rebound {
			w.ident(n.Ident)
		}
	case *parse.VariableNode:
		if len(n.Ident) > 1 && n.Ident[0] == "$" {
			w.ident(n.Ident[1:])
		}
	case *parse.DotNode:
		if !rebound {
			w.ok = false
		}
	case *parse.TemplateNode:
		w.ok = false
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				w.node(c, rebound)
			}
		}
	case *parse.ActionNode:
		w.node(n.Pipe, rebound)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				w.node(c, rebound)
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			w.node(a, rebound)
		}
	case *parse.ChainNode:
		w.node(n.Node, rebound)
	case *parse.IfNode:
		w.node(n.Pipe, rebound)
		w.node(n.List, rebound)
		w.node(n.ElseList, rebound)
	case *parse.RangeNode:
		w.node(n.Pipe, rebound)
		w.node(n.List, true)
		w.node(n.ElseList, rebound)
	case *parse.WithNode:
		w.node(n.Pipe, rebound)
		w.node(n.List, true)
		w.node(n.ElseList, rebound)
	}
}
