package render

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/templates"
)

// Node is the node a configuration renders for.
type Node struct {
	Name   string
	Labels map[string]string
}

// Data is what templates see.
type Data struct {
	// Objects maps every type the configuration reads to its objects,
	// sorted by ID; empty, never missing, when a type has none.
	Objects map[string][]objects.Object
	// Object is the current object in a for_each file or directory.
	Object *objects.Object
	Node   Node
	// Revision is the etcd revision of the snapshot.
	Revision int64

	memo *rangeMemo
}

// File is one rendered file.
type File struct {
	// Path is the path as the configuration names it, e.g. /etc/x.conf.
	Path string
	// Real is Path under the root: where it is written.
	Real    string
	Content []byte
	Mode    fs.FileMode
	configs.Ownership
	Check configs.Command
}

// Directory is one rendered directory.
type Directory struct {
	Path string
	Real string
	Mode fs.FileMode
	configs.Ownership
}

// Output is everything one configuration renders.
type Output struct {
	Directories []Directory // in configuration order
	Files       []File      // sorted by Path
	paths       map[string]bool
}

// Has reports whether the output has a file at path.
func (o *Output) Has(path string) bool { return o.paths[path] }

// Render renders cfg from snap for node, confining paths to root. It fails
// without output if any object the configuration reads is malformed, any
// template fails, a path escapes root, or two files share a path.
func Render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string) (*Output, error) {
	r := &renderer{budget: newBudget(cfg)}
	return r.render(cfg, snap, node, root)
}

// renderer renders one configuration, with a cache or without (nil).
type renderer struct {
	cache  *configCache
	deps   *Cache
	used   int // cache entries used or made by this render
	budget budget
}

func (r *renderer) render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string) (*Output, error) {
	types := cfg.Types()
	if err := snap.Check(types...); err != nil {
		return nil, err
	}
	data := Data{Objects: map[string][]objects.Object{}, Node: node, Revision: snap.Revision,
		memo: &rangeMemo{budget: r.budget, cache: r.cache}}
	for _, t := range types {
		data.Objects[t] = snap.List(t)
	}
	c := newConfiner(root)
	out := &Output{Files: make([]File, 0, r.expected())}
	for _, d := range cfg.Directories {
		err := each(d.ForEach, data, func(data Data) error {
			p, real, err := r.renderPath(c, d.Path, data)
			if err != nil {
				return err
			}
			out.Directories = append(out.Directories, Directory{Path: p, Real: real, Mode: d.Mode, Ownership: d.Ownership})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	seen := make(map[string]bool, r.expected())
	for i := range cfg.Files {
		f := &cfg.Files[i]
		var versions []int64
		cached := false
		if r.cache != nil && f.ForEach != "" {
			var deps []string
			deps, cached = r.deps.deps(f)
			versions = versionsOf(snap, deps)
		}
		err := each(f.ForEach, data, func(data Data) error {
			file, err := r.file(c, f, data, cached, versions)
			if err != nil {
				return err
			}
			if seen[file.Path] {
				return fmt.Errorf("file %s is rendered twice%s", file.Path, objectSuffix(data))
			}
			seen[file.Path] = true
			out.Files = append(out.Files, file)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	byPath := func(a, b File) int { return strings.Compare(a.Path, b.Path) }
	if !slices.IsSortedFunc(out.Files, byPath) {
		slices.SortFunc(out.Files, byPath)
	}
	out.paths = seen
	return out, nil
}

// file renders one file, or takes it from the cache when the object has
// not changed since the last render.
func (r *renderer) file(c *confiner, f *configs.File, data Data, cached bool, versions []int64) (File, error) {
	var key cacheKey
	if cached {
		key = cacheKey{file: f, id: data.Object.ID}
		if e, ok := r.cache.entries[key]; ok && e.revision == data.Object.Revision && slices.Equal(e.versions, versions) {
			e.gen = r.cache.gen
			r.used++
			return e.file, nil
		}
	}
	p, real, err := r.renderPath(c, f.Path, data)
	if err != nil {
		return File{}, err
	}
	buf := r.budget.writer(fmt.Sprintf("render %s%s", p, objectSuffix(data)))
	if err := f.Body.Execute(buf, data); err != nil {
		return File{}, fmt.Errorf("render %s%s: %w", p, objectSuffix(data), templates.CleanError(err))
	}
	file := File{Path: p, Real: real, Content: tight(buf.Bytes()), Mode: f.Mode, Ownership: f.Ownership, Check: f.Check}
	if cached {
		r.cache.entries[key] = &cacheEntry{revision: data.Object.Revision, versions: versions, file: file, gen: r.cache.gen}
		r.used++
	}
	return file, nil
}

// tight returns b, or a copy without the room a growing buffer left at its
// end when that room is over an eighth: the content stays in memory (the
// cache, the applier's known state) for as long as the file is unchanged,
// and 10,000 vhosts of 1.2 KB carried 7 MB of it.
func tight(b []byte) []byte {
	if cap(b)-len(b) > len(b)/8 {
		return bytes.Clone(b)
	}
	return b
}

// expected guesses how many files the render makes, to size its maps.
func (r *renderer) expected() int {
	if r.cache == nil {
		return 0
	}
	return len(r.cache.entries)
}

// versionsOf returns the versions of types, in the order of types (fixed
// per template).
func versionsOf(snap *objects.Snapshot, types []string) []int64 {
	if len(types) == 0 {
		return nil
	}
	v := make([]int64, len(types))
	for i, t := range types {
		v[i] = snap.Versions[t]
	}
	return v
}

// each calls fn once with data, or with forEach set once per object of that
// type, in ID order.
func each(forEach string, data Data, fn func(Data) error) error {
	if forEach == "" {
		return fn(data)
	}
	for _, o := range data.Objects[forEach] {
		d := data
		d.Object = &o
		if err := fn(d); err != nil {
			return err
		}
	}
	return nil
}

func (r *renderer) renderPath(c *confiner, t *templates.Template, data Data) (path, real string, err error) {
	buf := r.budget.writer(fmt.Sprintf("render path %q%s", t.Root.String(), objectSuffix(data)))
	if err := t.Execute(buf, data); err != nil {
		return "", "", fmt.Errorf("render path %q%s: %w", t.Root.String(), objectSuffix(data), templates.CleanError(err))
	}
	path = buf.String()
	real, err = c.confine(path)
	if err != nil {
		return "", "", fmt.Errorf("path %q%s: %w", path, objectSuffix(data), err)
	}
	return path, real, nil
}

// objectSuffix names the object being rendered, so an error leads to its
// etcd key.
func objectSuffix(data Data) string {
	if data.Object == nil {
		return ""
	}
	return fmt.Sprintf(" (object %s/%s)", data.Object.Type, data.Object.ID)
}

// ErrEscapes is returned for a path that would leave the root.
var ErrEscapes = errors.New("escapes the root")
