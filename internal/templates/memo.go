package templates

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"
	"text/template/parse"
)

// A template that renders many objects into one file ranges over a type:
//
//	{{ range .Objects.sites }}{{ .ID }} {{ .Data.user }};{{ end }}
//
// When one site changes, the other 9,999 bodies render exactly as before.
// Parse rewrites such a range, when its body reads nothing but its element,
// into a call of rangeFunc, so that the renderer can serve each element's
// output from a cache (see Ranger):
//
//	{{ ccm_range__ $ "<template>#range1" .Objects.sites }}
//
// The walk that finds what a template reads (analyze) also decides which
// ranges qualify. A body qualifies when it has no {{break}} or {{continue}}, uses neither
// $ nor a variable declared outside it (except the range's own element
// variable), and assigns no outer variable; the range has no {{else}} and
// declares at most the element variable. Anything else renders as written.
// Only the main template is rewritten, never one made with {{define}}, so
// that $ in the call is always the data the renderer passed.

// rangeFunc is the function a rewritten range calls. The name cannot
// clash with Sprig's, and calling it by hand gains nothing.
const rangeFunc = "ccm_range__"

// rangeSuffix marks the templates Parse adds for a rewritten range.
const rangeSuffix = "#range"

// Ranger renders a rewritten range. The renderer's data implements it;
// body renders one element (the element is its dot), loop is the original
// range with the value of the range pipeline as its dot.
type Ranger interface {
	CCMRange(body, loop *template.Template, value any) (string, error)
}

// IsRangeBody reports whether t is one Parse added for a rewritten range:
// its dot is an element of the range, never the renderer's data.
func IsRangeBody(t *template.Template) bool {
	return strings.Contains(t.Name(), rangeSuffix)
}

// memoize rewrites the ranges of t's main tree that qualify (see analyze).
func memoize(t *template.Template, qualify map[*parse.RangeNode]bool) error {
	if t.Tree == nil {
		return nil
	}
	m := &memoizer{t: t, qualify: qualify}
	m.list(t.Tree.Root)
	if m.err != nil {
		return m.err
	}
	t.Funcs(template.FuncMap{rangeFunc: m.call})
	return nil
}

type memoizer struct {
	t       *template.Template
	qualify map[*parse.RangeNode]bool
	n       int
	err     error
}

// call is rangeFunc: root is $, the data the template was executed with.
func (m *memoizer) call(root any, name string, value any) (string, error) {
	body, loop := m.t.Lookup(name+"/body"), m.t.Lookup(name+"/loop")
	if body == nil || loop == nil {
		return "", fmt.Errorf("%s: no range %q", rangeFunc, name)
	}
	if r, ok := root.(Ranger); ok {
		return r.CCMRange(body, loop, value)
	}
	var b strings.Builder
	err := loop.Execute(&b, value)
	return b.String(), err
}

// list rewrites the ranges in l and in the branches below it.
func (m *memoizer) list(l *parse.ListNode) {
	if l == nil {
		return
	}
	for i, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.RangeNode:
			if repl := m.rewrite(n); repl != nil {
				l.Nodes[i] = repl
				continue
			}
			m.list(n.List)
			m.list(n.ElseList)
		case *parse.IfNode:
			m.list(n.List)
			m.list(n.ElseList)
		case *parse.WithNode:
			m.list(n.List)
			m.list(n.ElseList)
		}
	}
}

// rewrite returns the call that replaces r, or nil when r does not
// qualify.
func (m *memoizer) rewrite(r *parse.RangeNode) parse.Node {
	if m.err != nil || !m.qualify[r] {
		return nil
	}
	elem := ""
	if len(r.Pipe.Decl) == 1 {
		elem = r.Pipe.Decl[0].Ident[0]
	}
	m.n++
	name := fmt.Sprintf("%s%s%d", m.t.Name(), rangeSuffix, m.n)
	decl := ""
	if elem != "" {
		decl = elem + " := "
	}
	body, err := m.tree(name+"/body", fmt.Sprintf("{{%s.}}", decl))
	if err != nil {
		m.err = err
		return nil
	}
	if elem == "" {
		body.Root.Nodes = nil
	}
	body.Root.Nodes = append(body.Root.Nodes, r.List.CopyList().Nodes...)
	loop, err := m.tree(name+"/loop", fmt.Sprintf("{{range %s.}}{{end}}", decl))
	if err != nil {
		m.err = err
		return nil
	}
	loop.Root.Nodes[0].(*parse.RangeNode).List = r.List.CopyList()
	call, err := m.tree(name+"/call", fmt.Sprintf("{{%s $ %q 0}}", rangeFunc, name))
	if err != nil {
		m.err = err
		return nil
	}
	action := call.Root.Nodes[0].(*parse.ActionNode)
	arg := r.Pipe.CopyPipe()
	arg.Decl = nil
	action.Pipe.Cmds[0].Args[3] = arg
	for _, tr := range []*parse.Tree{body, loop} {
		if _, err := m.t.AddParseTree(tr.Name, tr); err != nil {
			m.err = err
			return nil
		}
	}
	return action
}

// tree parses one line of template text with rangeFunc known.
func (m *memoizer) tree(name, text string) (*parse.Tree, error) {
	funcs := map[string]any{rangeFunc: m.call}
	trees, err := parse.Parse(name, text, "", "", funcs)
	if err != nil {
		return nil, err
	}
	return trees[name], nil
}

// rangeNames matches the names of the templates a rewrite adds.
var rangeNames = regexp.MustCompile(regexp.QuoteMeta(rangeSuffix) + `[0-9]+/(body|loop|call)`)

// CleanError returns an error of a template's execution as the template
// as written would have reported it: an error inside a rewritten range
// names the template and the line of the range's body, not the rewrite.
// It wraps what err wraps.
func CleanError(err error) error {
	var outer template.ExecError
	if !errors.As(err, &outer) || !strings.Contains(outer.Error(), "error calling "+rangeFunc+": ") {
		return err
	}
	inner := errors.Unwrap(errors.Unwrap(outer))
	if inner == nil {
		return err
	}
	return &rangeError{inner}
}

// rangeError is an error from inside a rewritten range.
type rangeError struct{ err error }

func (e *rangeError) Error() string { return rangeNames.ReplaceAllString(e.err.Error(), "") }
func (e *rangeError) Unwrap() error { return e.err }
