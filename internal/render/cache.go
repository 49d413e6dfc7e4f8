package render

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"text/template"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/runkind"
	"github.com/ccm-dev/ccm/internal/templates"
)

// Cache remembers for_each output per object revision, so a run after one
// object changed renders one file, not ten thousand. It only serves
// templates whose output depends only on their object, the node and the
// types they read through .Objects (see templates.Reads): an entry is valid while
// the object's revision and those types' versions are unchanged. Any other
// template renders every time. A Cache is used by
// one goroutine at a time (the applier's runs are serialised).
type Cache struct {
	// configs maps a configuration name to the entries of its last render;
	// each render replaces them, which drops deleted objects and the files
	// of configurations that were reloaded.
	configs map[string]*configCache
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
	memos   map[*configs.File]*fileMemo          // each for_each entry's entries, by position
	files   *lastFiles                           // the last render's files
	gen     uint64
}

// lastFiles is the files of a configuration's last render and their set
// of paths: a render that makes the same files again shares the set.
type lastFiles struct {
	list []File
	set  *fileSet
}

// fileMemo is the entries a for_each file entry used in its last render,
// by the object's position in the list: an event's render, over the same
// list, finds each by position, without hashing its key (the range
// memo's way, memo.go).
type fileMemo struct {
	last []*cacheEntry
	gen  uint64
}

// memo returns the memo of f, marked as used by this render.
func (cc *configCache) memo(f *configs.File) *fileMemo {
	m := cc.memos[f]
	if m == nil {
		m = &fileMemo{}
		cc.memos[f] = m
	}
	m.gen = cc.gen
	return m
}

// at returns the entry kept at pos if it is id's, or nil. A nil memo
// keeps none.
func (m *fileMemo) at(pos int, id string) *cacheEntry {
	if m == nil || pos >= len(m.last) {
		return nil
	}
	if e := m.last[pos]; e != nil && e.id == id {
		return e
	}
	return nil
}

// set keeps e at pos. Positions are set in increasing order, each read
// (at) before it is set, so the list is rewritten in place.
func (m *fileMemo) set(pos int, e *cacheEntry) {
	switch {
	case m == nil:
	case pos < len(m.last):
		m.last[pos] = e
	default:
		for len(m.last) < pos {
			m.last = append(m.last, nil)
		}
		m.last = append(m.last, e)
	}
}

// done ends a render that called the entry n times: what was kept past
// n is another list's.
func (m *fileMemo) done(n int) {
	if n < len(m.last) {
		clear(m.last[n:])
		m.last = m.last[:n]
	}
}

type cacheKey struct {
	file *configs.File // identity changes when the directory is reloaded
	id   string
}

type cacheEntry struct {
	id       string  // of the object, as in its key
	revision int64   // of the object
	versions []int64 // of the types the templates read, in deps order
	file     File
	gen      uint64 // the last render that used the entry
}

// NewCache returns an empty Cache.
func NewCache() *Cache {
	return &Cache{configs: map[string]*configCache{}}
}

// Render is render.Render with the cache. A runkind.Full run renders every file
// (and refills the cache): full runs trust nothing. It returns when ctx
// ends, and with ErrStuck when a template runs past its render_timeout
// without writing (see budget.watch).
func (c *Cache) Render(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, node Node, root string, kind runkind.Kind) (*Output, error) {
	if c.abandoned.Load() {
		return nil, fmt.Errorf("%w: an earlier render still runs; the process must restart", ErrStuck)
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	b := newBudget(cfg)
	out, err, abandoned := b.watch(ctx, func() (*Output, error) { return c.render(cfg, snap, node, root, kind, b) })
	if abandoned {
		c.abandoned.Store(true)
	}
	return out, err
}

func (c *Cache) render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string, kind runkind.Kind, b budget) (*Output, error) {
	cc := c.configs[cfg.Name]
	if cc == nil || kind == runkind.Full {
		cc = &configCache{entries: map[cacheKey]*cacheEntry{}, ranges: map[*template.Template]*rangeOutputs{}, memos: map[*configs.File]*fileMemo{}}
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
	for f, m := range cc.memos {
		if m.gen != cc.gen { // an entry of a reloaded directory
			delete(cc.memos, f)
		}
	}
	for body, outs := range cc.ranges {
		if outs.gen != cc.gen { // not called in this render
			delete(cc.ranges, body)
			continue
		}
		if len(outs.elems) == outs.used {
			continue
		}
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
// current object, those types and the node (see templates.Reads).
func (c *Cache) deps(f *configs.File) ([]string, bool) {
	var types []string
	for _, t := range []*templates.Template{f.Path, f.Body, f.OwnerT, f.GroupT} {
		if t == nil {
			continue
		}
		r := t.Reads()
		if !r.Cacheable() {
			return nil, false
		}
		types = append(types, r.Types...)
	}
	slices.Sort(types)
	return slices.Compact(types), true
}
