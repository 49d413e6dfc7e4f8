package render

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"maps"
	"slices"
	"strings"

	"github.com/ccm-dev/ccm/internal/accounts"
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
	// CheckAll is the file entry's whole-set check (configs.File.CheckAll).
	CheckAll configs.Command
	// Object is the for_each object ("type/id") the file is rendered for,
	// "" for a file of the whole configuration.
	Object string
}

// Directory is one rendered directory.
type Directory struct {
	Path string
	Real string
	Mode fs.FileMode
	configs.Ownership
	Object string // as File.Object
}

// Output is everything one configuration renders.
type Output struct {
	Directories []Directory // in configuration order
	Files       []File      // sorted by Path
	// Failed lists the objects that failed on their own and are left out:
	// the rest of the configuration renders without them.
	Failed []ObjectFailure
	// Groups and Users are the accounts, in configuration order.
	Groups []accounts.Group
	Users  []accounts.User
	// Held is every object ("type/id") left out, failed or held back by
	// the snapshot's quarantine: its files stay as they are.
	Held  map[string]bool
	paths *fileSet
	all   *fileSet // every file's path, held or not: never changed
}

// fileSet is the paths of an output's files. It is never changed once
// the render returned (HoldBack changes a copy), so outputs may share it.
type fileSet struct{ has map[string]bool }

// Has reports whether the output has a file at path.
func (o *Output) Has(path string) bool { return o.paths != nil && o.paths.has[path] }

// Renders reports whether the output has a file at path, held back or
// not.
func (o *Output) Renders(path string) bool { return o.all != nil && o.all.has[path] }

// SameFiles reports whether o and p have the same files at the same paths
// (as configured and on disk), for the same objects, in the same order, with the same answers from
// Has: o was rendered from p's cache entries, or p from o's. It answers
// in O(1) and may say false for equal outputs. Whether an object is Live
// is not part of it.
func (o *Output) SameFiles(p *Output) bool {
	return o != nil && p != nil && o.paths != nil && o.paths == p.paths
}

// ObjectFailure is one object that failed on its own: its render, its
// owner, its schema or its check. It is quarantined, not the configuration.
type ObjectFailure struct {
	Type, ID string
	Revision int64
	Err      error
}

// Err joins the errors of the objects that failed on their own, one per
// line; nil when none did.
func (o *Output) Err() error {
	errs := make([]error, len(o.Failed))
	for i, f := range o.Failed {
		errs[i] = f.Err
	}
	return errors.Join(errs...)
}

// Ref is "type/id".
func (f ObjectFailure) Ref() string { return f.Type + "/" + f.ID }

// Fail leaves the object out of o: it is quarantined, and its files stay.
func (o *Output) Fail(f ObjectFailure) {
	if o.Held == nil {
		o.Held = map[string]bool{}
	}
	if !o.Held[f.Ref()] {
		o.Failed = append(o.Failed, f)
	}
	o.Held[f.Ref()] = true
}

// Drop leaves out an object that failed after rendering (its owner, its
// account, its check): Fail, and what it rendered is no longer Live (its
// entries stay in place, so indexes and pointers into Files hold).
func (o *Output) Drop(f ObjectFailure) {
	o.Fail(f)
	o.HoldBack(f.Ref())
}

// Live reports whether an entry rendered for object ("" for none) is
// still part of the output: its object was not dropped.
func (o *Output) Live(object string) bool { return object == "" || !o.Held[object] }

// hold leaves out an object the snapshot holds back.
func (o *Output) hold(ref string) {
	if o.Held == nil {
		o.Held = map[string]bool{}
	}
	o.Held[ref] = true
}

// ErrEveryObject fails a configuration whose for_each entry failed for
// every one of at least two objects: the configuration is at fault, not
// an object, and the failure flag is raised.
var ErrEveryObject = errors.New("failed for every object")

// fatal reports whether a render error stops the configuration, whatever
// object it came from: a stuck template, or the run ending.
func fatal(err error) bool {
	return errors.Is(err, ErrStuck) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

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
	left   map[string]map[string]bool // objects left out, by type and ID
}

func (r *renderer) render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string) (*Output, error) {
	types := cfg.Types()
	out := &Output{Files: make([]File, 0, r.expected())}
	data := Data{Objects: map[string][]objects.Object{}, Node: node, Revision: snap.Revision,
		memo: &rangeMemo{budget: r.budget, cache: r.cache}}
	left, err := leaveOut(snap, types, out)
	if err != nil {
		return nil, err
	}
	r.left = left
	for _, t := range types {
		data.Objects[t] = visible(snap.List(t), left[t])
	}
	if err := r.accounts(cfg, data, out); err != nil {
		return nil, err
	}
	c := newConfiner(root)
	for _, d := range cfg.Directories {
		err := each(d.ForEach, data, out, func(data Data) error {
			p, real, err := r.renderPath(c, d.Path, data)
			if err != nil {
				return err
			}
			own, err := r.ownership(d.Ownership, d.OwnerTemplates, data)
			if err != nil {
				return err
			}
			out.Directories = append(out.Directories, Directory{Path: p, Real: real, Mode: d.Mode, Ownership: own, Object: ref(data)})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	// The files are checked for a path rendered twice as they are added.
	// While they are those of the last render, path for path and object
	// for object, they cannot be (it had none), and its set of paths is
	// shared instead of hashing 10,000 paths again; from the first file
	// that differs, the paths so far go into a set of their own.
	var prev []File
	if r.cache != nil && r.cache.files != nil {
		prev = r.cache.files.list
	}
	var seen map[string]bool
	matching := prev != nil
	add := func(file File, data Data) error {
		if n := len(out.Files); matching {
			if n < len(prev) && prev[n].Path == file.Path && prev[n].Real == file.Real && prev[n].Object == file.Object {
				out.Files = append(out.Files, file)
				return nil
			}
			matching, seen = false, pathSet(out.Files, r.expected())
		}
		if seen[file.Path] {
			return fmt.Errorf("file %s is rendered twice%s", file.Path, objectSuffix(data))
		}
		seen[file.Path] = true
		out.Files = append(out.Files, file)
		return nil
	}
	if !matching {
		seen = make(map[string]bool, r.expected())
	}
	out.Files = slices.Grow(out.Files, r.expected()) // 10,000 files appended one by one copied the list about 20 times
	for i := range cfg.Files {
		f := &cfg.Files[i]
		var versions []int64
		cached := false
		var memo *fileMemo
		if r.cache != nil && f.ForEach != "" {
			var deps []string
			deps, cached = r.deps.deps(f)
			versions = versionsOf(snap, deps, r.left)
			if cached {
				memo = r.cache.memo(f)
			}
		}
		pos := 0
		err := each(f.ForEach, data, out, func(data Data) error {
			file, err := r.file(c, f, data, cached, versions, memo, pos)
			pos++
			if err != nil {
				return err
			}
			return add(file, data)
		})
		if memo != nil {
			memo.done(pos)
		}
		if err != nil {
			return nil, err
		}
	}
	byPath := func(a, b File) int { return strings.Compare(a.Path, b.Path) }
	if !slices.IsSortedFunc(out.Files, byPath) {
		slices.SortFunc(out.Files, byPath)
	}
	switch {
	case matching && len(out.Files) == len(prev):
		out.paths = r.cache.files.set
	case matching:
		out.paths = &fileSet{has: pathSet(out.Files, 0)}
	default:
		out.paths = &fileSet{has: seen}
	}
	out.all = out.paths
	if r.cache != nil {
		r.cache.files = &lastFiles{list: out.Files, set: out.paths}
	}
	return out, nil
}

// pathSet returns the set of files' paths, sized for at least n.
func pathSet(files []File, n int) map[string]bool {
	seen := make(map[string]bool, max(n, len(files)))
	for i := range files {
		seen[files[i].Path] = true
	}
	return seen
}

// file renders one file, or takes it from the cache when the object has
// not changed since the last render.
func (r *renderer) file(c *confiner, f *configs.File, data Data, cached bool, versions []int64, memo *fileMemo, pos int) (File, error) {
	var key cacheKey
	if cached {
		key = cacheKey{file: f, id: data.Object.ID}
		e := memo.at(pos, data.Object.ID)
		if e == nil {
			e = r.cache.entries[key]
		}
		if e != nil && e.revision == data.Object.Revision && slices.Equal(e.versions, versions) {
			e.gen = r.cache.gen
			r.used++
			memo.set(pos, e)
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
	own, err := r.ownership(f.Ownership, f.OwnerTemplates, data)
	if err != nil {
		return File{}, err
	}
	file := File{Path: p, Real: real, Content: tight(buf.Bytes()), Mode: f.Mode, Ownership: own, Check: f.Check, CheckAll: f.CheckAll, Object: ref(data)}
	if cached {
		e := &cacheEntry{id: key.id, revision: data.Object.Revision, versions: versions, file: file, gen: r.cache.gen}
		r.cache.entries[key] = e
		r.used++
		memo.set(pos, e)
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
// per template). A type with objects left out adds a digest of their IDs:
// the list a template reads changes when the quarantine does, while the
// type's version does not.
func versionsOf(snap *objects.Snapshot, types []string, left map[string]map[string]bool) []int64 {
	if len(types) == 0 {
		return nil
	}
	v := make([]int64, len(types), len(types)+len(left))
	for i, t := range types {
		v[i] = snap.Versions[t]
	}
	for _, t := range types {
		if ids := left[t]; len(ids) > 0 {
			h := fnv.New64a()
			for _, id := range slices.Sorted(maps.Keys(ids)) {
				h.Write([]byte(id + "\x00"))
			}
			v = append(v, int64(h.Sum64()>>1))
		}
	}
	return v
}

// each calls fn once with data, or with forEach set once per object of that
// type, in ID order. An object whose fn fails is left out of out and
// quarantined, and the others go on; the error is returned when it is
// fatal, or when every one of at least two objects failed.
func each(forEach string, data Data, out *Output, fn func(Data) error) error {
	if forEach == "" {
		return fn(data)
	}
	var first error
	failed := 0
	list := data.Objects[forEach]
	for i := range list {
		// Not a copy: a copy escapes, one allocation per object per render
		// (10,000 of a per-file event's 10,249).
		o := &list[i]
		if len(out.Held) > 0 && out.Held[o.Type+"/"+o.ID] { // failed in an earlier entry
			continue
		}
		d := data
		d.Object = o
		err := fn(d)
		if err == nil {
			continue
		}
		if fatal(err) {
			return err
		}
		failed++
		first = cmp.Or(first, err)
		out.Fail(ObjectFailure{Type: o.Type, ID: o.ID, Revision: o.Revision, Err: err})
	}
	if n := len(data.Objects[forEach]); n >= 2 && failed == n {
		return fmt.Errorf("%w of type %s (%d), so the configuration is at fault: %w", ErrEveryObject, forEach, n, first)
	}
	return nil
}

// ref is the for_each object data renders for, "" for none.
func ref(data Data) string {
	if data.Object == nil {
		return ""
	}
	return data.Object.Type + "/" + data.Object.ID
}

// leaveOut finds the objects of types a render leaves out: those the
// snapshot's quarantine holds back, and malformed ones, which fail on
// their own (out.Fail). It returns their IDs by type, and an error only
// for a malformed object it cannot name.
func leaveOut(snap *objects.Snapshot, types []string, out *Output) (map[string]map[string]bool, error) {
	var left map[string]map[string]bool
	add := func(typ, id string) {
		if left == nil {
			left = map[string]map[string]bool{}
		}
		if left[typ] == nil {
			left[typ] = map[string]bool{}
		}
		left[typ][id] = true
	}
	var errs []error
	for _, t := range types {
		for _, err := range snap.Invalid[t] {
			var oe *objects.ObjectError
			if !errors.As(err, &oe) {
				errs = append(errs, err)
				continue
			}
			add(oe.Type, oe.ID)
			if rev, ok := snap.Held[oe.Type+"/"+oe.ID]; ok && rev == oe.Revision {
				out.hold(oe.Type + "/" + oe.ID)
				continue
			}
			out.Fail(ObjectFailure{Type: oe.Type, ID: oe.ID, Revision: oe.Revision, Err: err})
		}
		if len(snap.Held) == 0 {
			continue
		}
		for _, o := range snap.List(t) {
			if snap.Holds(&o) {
				add(o.Type, o.ID)
				out.hold(o.Type + "/" + o.ID)
			}
		}
	}
	return left, errors.Join(errs...)
}

// visible is l without the objects left out.
func visible(l []objects.Object, left map[string]bool) []objects.Object {
	if len(left) == 0 {
		return l
	}
	return slices.DeleteFunc(slices.Clone(l), func(o objects.Object) bool { return left[o.ID] })
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
