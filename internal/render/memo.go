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
	size  int
}

// rangeEntry is one element's output, valid while the object's revision
// is unchanged: a rewritten body reads nothing but its element (see
// templates.Ranger).
type rangeEntry struct {
	revision int64
	out      string
	gen      uint64
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
	w.Grow(outs.size)
	for _, o := range objs {
		key := [2]string{o.Type, o.ID}
		if e, ok := outs.elems[key]; ok && o.Revision > 0 && e.revision == o.Revision {
			e.gen = cc.gen
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
			outs.elems[key] = &rangeEntry{revision: o.Revision, out: string(w.Bytes()[start:]), gen: cc.gen}
		}
	}
	outs.size = w.Len()
	return w.String(), nil
}
