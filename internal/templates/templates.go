// Package templates is the template language of configurations: Go
// text/template with an allow-list of Sprig's functions and
// missingkey=error.
//
// Templates are hermetic: a template is a pure function of its data, so
// the same objects render the same bytes on every node and in every run.
// Functions that read the clock, randomness, DNS or the environment are
// not there (a template calling one fails to load, naming the function
// and why), and no function can change object data, which every
// configuration shares. Parse also finds what a template reads (Reads),
// so that the renderer never serves a stale cached output.
package templates

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
)

// Limits of the Sprig functions that allocate by a count, so that one
// object field cannot exhaust the agent's memory.
const (
	// MaxRepeat is the most bytes repeat may produce.
	MaxRepeat = 16 << 20
	// MaxSequence is the most elements until, untilStep and seq may
	// produce.
	MaxSequence = 1 << 20
)

// bound replaces the Sprig functions that allocate by a count with ones
// that refuse a count over the limits.
func bound(fm template.FuncMap) {
	until := fm["until"].(func(int) []int)
	untilStep := fm["untilStep"].(func(int, int, int) []int)
	seq := fm["seq"].(func(...int) string)
	fm["repeat"] = func(count int, str string) (string, error) {
		if count < 0 || (len(str) > 0 && count > MaxRepeat/len(str)) {
			return "", fmt.Errorf("repeat %d times %d bytes: over the limit of %d bytes", count, len(str), MaxRepeat)
		}
		if err := charge("repeat", int64(count*len(str))); err != nil {
			return "", err
		}
		return strings.Repeat(str, count), nil
	}
	fm["until"] = func(count int) ([]int, error) {
		if err := checkCount("until", int64(count)); err != nil {
			return nil, err
		}
		return until(count), nil
	}
	fm["untilStep"] = func(start, stop, step int) ([]int, error) {
		if err := checkCount("untilStep", steps(start, stop, step)); err != nil {
			return nil, err
		}
		return untilStep(start, stop, step), nil
	}
	fm["seq"] = func(params ...int) (string, error) {
		var n int64
		switch len(params) {
		case 1:
			n = steps(1, params[0], 1)
		case 2:
			n = steps(params[0], params[1], 1)
		case 3:
			n = steps(params[0], params[2], params[1])
		}
		if err := checkCount("seq", n); err != nil {
			return "", err
		}
		return seq(params...), nil
	}
}

// steps is how many elements a sequence from start to stop by step has, at
// most (its sign is not Sprig's business here).
func steps(start, stop, step int) int64 {
	if step == 0 {
		return 0
	}
	n := (int64(stop) - int64(start)) / int64(step)
	if n < 0 {
		n = -n
	}
	return n + 1
}

func checkCount(fn string, n int64) error {
	if n > MaxSequence {
		return fmt.Errorf("%s of %d elements: over the limit of %d", fn, n, MaxSequence)
	}
	return nil
}

// Template is a parsed template with what it reads.
type Template struct {
	*template.Template
	reads Reads
}

// Reads returns what the template's output depends on.
func (t *Template) Reads() Reads { return t.reads }

// Parse parses text as a template named name, with the ccm functions and
// missingkey=error, so a typo in a field name fails instead of rendering
// "<no value>". A call of an excluded function fails, naming each call's
// line and the reason (see Excluded).
//
// Ranges whose body reads only its element are rewritten so that the
// renderer can cache each element's output (see Ranger); the output is
// the same.
func Parse(name, text string) (*Template, error) {
	t, err := template.New(name).Funcs(parseFuncs()).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	if err := checkExcluded(t); err != nil {
		return nil, err
	}
	rememberLiterals(t)
	reads, qualify := analyze(t)
	if err := memoize(t, qualify); err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return &Template{Template: t, reads: reads}, nil
}

// checkExcluded returns one error per call of an excluded function in
// any of t's templates, each with its line.
func checkExcluded(t *template.Template) error {
	type found struct {
		tree string
		pos  parse.Pos
		err  error
	}
	var all []found
	walkTemplates(t, func(tree *parse.Tree, n parse.Node) {
		id, ok := n.(*parse.IdentifierNode)
		if !ok {
			return
		}
		if why := excluded[id.Ident]; why != "" {
			loc, _ := tree.ErrorContext(id)
			all = append(all, found{tree.Name, id.Pos, fmt.Errorf("template: %s: function %q is not allowed: %s", loc, id.Ident, why)})
		}
	})
	sort.Slice(all, func(i, j int) bool {
		if all[i].tree != all[j].tree {
			return all[i].tree < all[j].tree
		}
		return all[i].pos < all[j].pos
	})
	errs := make([]error, len(all))
	for i, f := range all {
		errs[i] = f.err
	}
	return errors.Join(errs...)
}

// walkTemplates calls fn for every node of each of t's parsed templates,
// with the template's tree.
func walkTemplates(t *template.Template, fn func(*parse.Tree, parse.Node)) {
	for _, tt := range t.Templates() {
		if tree := tt.Tree; tree != nil {
			walk(tree.Root, func(n parse.Node) { fn(tree, n) })
		}
	}
}

// walk calls fn for n and every node below it.
func walk(n parse.Node, fn func(parse.Node)) {
	if n == nil || reflect.ValueOf(n).IsNil() {
		return
	}
	fn(n)
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			walk(c, fn)
		}
	case *parse.ActionNode:
		walk(n.Pipe, fn)
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			walk(c, fn)
		}
	case *parse.CommandNode:
		for _, c := range n.Args {
			walk(c, fn)
		}
	case *parse.ChainNode:
		walk(n.Node, fn)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.TemplateNode:
		walk(n.Pipe, fn)
	}
}

func walkBranch(b *parse.BranchNode, fn func(parse.Node)) {
	walk(b.Pipe, fn)
	walk(b.List, fn)
	walk(b.ElseList, fn)
}
