package render

import (
	"strings"
	"text/template"

	"github.com/ccm-dev/ccm/internal/objects"
)

// rangeOutputs are one range body's element outputs, by object type and
// ID, and the size of its last whole output.
type rangeOutputs struct {
	elems map[[2]string]*rangeEntry
	// last is the entries of the last call, in its order (nil where an
	// element was not kept): a call over the same list, as an event's
	// render is, finds its entries by position, without hashing.
	last []*rangeEntry
	size int
	// gen is the render that last called the body, and used how many of
	// elems it used: the sweep of stale entries skips a body with none.
	gen  uint64
	used int
}

// rangeEntry is one element's output, valid while the object's revision
// is unchanged: a rewritten body reads nothing but its element (see
// templates.Ranger).
type rangeEntry struct {
	typ, id  string
	revision int64
	out      string
	gen      uint64
}

// entry returns the kept entry of objs[i], or nil.
func (r *rangeOutputs) entry(i int, o objects.Object) *rangeEntry {
	if i < len(r.last) {
		if e := r.last[i]; e != nil && e.id == o.ID && e.typ == o.Type {
			return e
		}
	}
	return r.elems[[2]string{o.Type, o.ID}]
}

// use marks e as used by the render gen.
func (r *rangeOutputs) use(e *rangeEntry, gen uint64) {
	if e.gen != gen {
		e.gen = gen
		r.used++
	}
}

// rangeMemo is what a render's ranges share: the budget of the file being
// rendered and, with a Cache, the configuration's element outputs.
type rangeMemo struct {
	budget budget
	cache  *configCache // nil: no cache, every element renders
}

// CCMRange renders a range that templates.Parse rewrote: over objects,
// each element's output comes from the cache while the object's revision
// is unchanged; over anything else, or without a cache, the range renders
// as written. Templates cannot call it usefully: it takes parsed
// templates, which they cannot make.
func (d Data) CCMRange(body, loop *template.Template, value any) (string, error) {
	if d.memo == nil {
		var b strings.Builder
		err := loop.Execute(&b, value)
		return b.String(), err
	}
	w := d.memo.budget.part()
	objs, ok := value.([]objects.Object)
	cc := d.memo.cache
	if !ok || cc == nil {
		if err := loop.Execute(w, value); err != nil {
			return "", err
		}
		return w.String(), nil
	}
	outs := cc.ranges[body] // the body's identity changes when the directory is reloaded
	if outs == nil {
		outs = &rangeOutputs{elems: make(map[[2]string]*rangeEntry, len(objs))}
		cc.ranges[body] = outs
	}
	if outs.gen != cc.gen {
		outs.gen, outs.used = cc.gen, 0
	}
	w.Grow(outs.size)
	order := make([]*rangeEntry, len(objs))
	for i, o := range objs {
		if e := outs.entry(i, o); e != nil && o.Revision > 0 && e.revision == o.Revision {
			outs.use(e, cc.gen)
			order[i] = e
			if _, err := w.WriteString(e.out); err != nil {
				return "", err
			}
			continue
		}
		start := w.Len()
		if err := body.Execute(w, o); err != nil {
			return "", err
		}
		if o.Revision > 0 {
			e := &rangeEntry{typ: o.Type, id: o.ID, revision: o.Revision, out: string(w.Bytes()[start:])}
			if old := outs.elems[[2]string{o.Type, o.ID}]; old != nil && old.gen == cc.gen {
				e.gen = cc.gen // counted already
			}
			outs.use(e, cc.gen)
			outs.elems[[2]string{o.Type, o.ID}] = e
			order[i] = e
		}
	}
	outs.last = order
	outs.size = w.Len()
	return w.String(), nil
}
