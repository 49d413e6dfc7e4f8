package render

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"text/template"

	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/objects"
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
}

// Render renders cfg from snap for node, confining paths to root. It fails
// without output if any object the configuration reads is malformed, any
// template fails, a path escapes root, or two files share a path.
func Render(cfg *configs.Config, snap *objects.Snapshot, node Node, root string) (*Output, error) {
	types := cfg.Types()
	if err := snap.Check(types...); err != nil {
		return nil, err
	}
	data := Data{Objects: map[string][]objects.Object{}, Node: node, Revision: snap.Revision}
	for _, t := range types {
		data.Objects[t] = snap.List(t)
	}
	c := confiner{root: root}
	out := &Output{}
	for _, d := range cfg.Directories {
		err := each(d.ForEach, data, func(data Data) error {
			p, real, err := renderPath(c, d.Path, data)
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
	seen := map[string]bool{}
	for _, f := range cfg.Files {
		err := each(f.ForEach, data, func(data Data) error {
			p, real, err := renderPath(c, f.Path, data)
			if err != nil {
				return err
			}
			if seen[p] {
				return fmt.Errorf("file %s is rendered twice%s", p, objectSuffix(data))
			}
			seen[p] = true
			var buf bytes.Buffer
			if err := f.Body.Execute(&buf, data); err != nil {
				return fmt.Errorf("render %s%s: %w", p, objectSuffix(data), err)
			}
			out.Files = append(out.Files, File{Path: p, Real: real, Content: buf.Bytes(), Mode: f.Mode, Ownership: f.Ownership, Check: f.Check})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	return out, nil
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

func renderPath(c confiner, t *template.Template, data Data) (path, real string, err error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return "", "", fmt.Errorf("render path %q%s: %w", t.Root.String(), objectSuffix(data), err)
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
