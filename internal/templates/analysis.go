package templates

import (
	"slices"
	"text/template"
	"text/template/parse"
)

// Reads is what a template's output can depend on besides the current
// object (.Object, whose revision changes with it) and the node (.Node).
// Parse finds it once, by one walk of the parse trees that also decides
// which ranges the renderer may cache (see Ranger). The renderer caches a
// template's output only while Cacheable holds and none of Types changed.
type Reads struct {
	// Types are the object types read through .Objects.<type>, sorted.
	Types []string
	// Revision is set when the template reads .Revision, the snapshot's
	// revision, which changes with every event.
	Revision bool
	// Unknown is set when the analysis cannot prove what the template
	// reads: the data or .Objects handed whole to a function or printed,
	// a range over .Objects, a template called with a value it cannot
	// follow, a parse node it does not know. The template may read
	// anything.
	Unknown bool
}

// Cacheable reports whether the output is a function of the current
// object, the node and the objects of Types alone.
func (r Reads) Cacheable() bool { return !r.Revision && !r.Unknown }

// kind is what the analysis knows of a value.
type kind uint8

const (
	// safe: covered by the cache key (the object, the node, an element of
	// a type in Types, a literal, a function's result from safe values).
	safe kind = iota
	// objects: the whole .Objects map.
	objectsMap
	// root: the data itself, as dot or $ are at the top of the template.
	root
	// unknown: anything; producing it sets Reads.Unknown.
	unknownKind
)

// join is the kind of a variable that holds a or b.
func join(a, b kind) kind {
	switch {
	case a == b, b == safe:
		return a
	case a == safe:
		return b
	}
	return unknownKind
}

// variable is one declared template variable; its kind only grows, over
// the passes of analyze, until no assignment changes it.
type variable struct{ kind kind }

type binding struct {
	name string
	v    *variable
}

// candidate is a range of the main tree that may be rewritten: it
// qualifies unless its body reads or assigns a variable declared outside
// it ($ included), or breaks or continues.
type candidate struct {
	node *parse.RangeNode
	base int // the scope depth where the range's own variables start
}

type analyzer struct {
	t        *template.Template
	types    map[string]bool
	reads    Reads
	vars     map[*parse.VariableNode]*variable
	changed  bool
	dot      kind
	scope    []binding
	open     []candidate
	main     bool // walking the main tree: ranges are candidates
	refused  map[*parse.RangeNode]bool
	seen     map[*parse.RangeNode]bool
	entered  map[string]bool // templates being walked, against recursion
	analysed map[string]bool // templates walked with root as their dot
}

// analyze finds what t reads and which ranges of its main tree qualify
// for the range cache.
func analyze(t *template.Template) (Reads, map[*parse.RangeNode]bool) {
	a := &analyzer{t: t, types: map[string]bool{}, vars: map[*parse.VariableNode]*variable{},
		refused: map[*parse.RangeNode]bool{}, seen: map[*parse.RangeNode]bool{}}
	if t.Tree == nil {
		return Reads{}, nil
	}
	// Variables' kinds grow with each pass (at most three steps each), so
	// this ends; the bound only guards against a mistake here.
	for pass := 0; ; pass++ {
		a.changed = false
		a.entered, a.analysed = map[string]bool{}, map[string]bool{}
		a.walkTree(t.Tree, root, true)
		if !a.changed {
			break
		}
		if pass == 16 {
			a.reads.Unknown = true
			break
		}
	}
	a.reads.Types = nil
	for typ := range a.types {
		a.reads.Types = append(a.reads.Types, typ)
	}
	slices.Sort(a.reads.Types)
	qualify := map[*parse.RangeNode]bool{}
	for r := range a.seen {
		if !a.refused[r] {
			qualify[r] = true
		}
	}
	return a.reads, qualify
}

// walkTree walks one template with dot (and $) of kind dot.
func (a *analyzer) walkTree(tree *parse.Tree, dot kind, main bool) {
	savedDot, savedMain, savedOpen, savedScope := a.dot, a.main, a.open, a.scope
	a.dot, a.main, a.open = dot, main, nil
	a.scope = []binding{{name: "$", v: &variable{kind: dot}}}
	a.list(tree.Root)
	a.dot, a.main, a.open, a.scope = savedDot, savedMain, savedOpen, savedScope
}

func (a *analyzer) list(l *parse.ListNode) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		a.node(n)
	}
}

func (a *analyzer) node(n parse.Node) {
	switch n := n.(type) {
	case *parse.TextNode, *parse.CommentNode:
	case *parse.ActionNode:
		k := a.pipe(n.Pipe)
		if len(n.Pipe.Decl) == 0 && k != safe {
			a.reads.Unknown = true // prints the data or .Objects whole
		}
		a.bind(n.Pipe, k, k)
	case *parse.IfNode:
		a.branch(&n.BranchNode, func(k kind) (kind, kind) { return a.dot, k })
	case *parse.WithNode:
		a.branch(&n.BranchNode, func(k kind) (kind, kind) { return k, k })
	case *parse.RangeNode:
		a.rangeNode(n)
	case *parse.TemplateNode:
		a.call(n)
	case *parse.BreakNode, *parse.ContinueNode:
		for _, c := range a.open {
			a.refused[c.node] = true
		}
	default:
		a.reads.Unknown = true
	}
}

// branch walks an if or with: body gives the dot of its list and the kind
// of the variables its pipeline declares, from the pipeline's kind.
func (a *analyzer) branch(b *parse.BranchNode, body func(kind) (dot, decl kind)) {
	k := a.pipe(b.Pipe)
	depth := len(a.scope)
	dot, decl := body(k)
	a.bind(b.Pipe, decl, decl)
	a.within(dot, b.List)
	a.within(a.dot, b.ElseList)
	a.scope = a.scope[:depth]
}

func (a *analyzer) rangeNode(r *parse.RangeNode) {
	k := a.pipe(r.Pipe)
	elem := safe
	if k != safe {
		elem = unknownKind // over .Objects (each type) or the data
		a.reads.Unknown = true
	}
	depth := len(a.scope)
	if a.main {
		a.seen[r] = true
		if r.ElseList != nil || len(r.Pipe.Decl) > 1 || r.Pipe.IsAssign {
			a.refused[r] = true
		}
		a.open = append(a.open, candidate{node: r, base: depth})
	}
	if len(r.Pipe.Decl) == 2 {
		a.bind(r.Pipe, safe, elem) // index or key, element
	} else {
		a.bind(r.Pipe, elem, elem)
	}
	a.within(elem, r.List)
	if a.main {
		a.open = a.open[:len(a.open)-1]
	}
	a.within(a.dot, r.ElseList)
	a.scope = a.scope[:depth]
}

// within walks l with dot; variables declared in l end with it.
func (a *analyzer) within(dot kind, l *parse.ListNode) {
	saved, depth := a.dot, len(a.scope)
	a.dot = dot
	a.list(l)
	a.dot, a.scope = saved, a.scope[:depth]
}

// call follows {{ template "name" pipeline }}: a called template's dot
// and $ are the pipeline's value, so with a safe value it can read
// nothing else; with the data itself it is walked in turn.
func (a *analyzer) call(n *parse.TemplateNode) {
	k := safe
	if n.Pipe != nil {
		k = a.pipe(n.Pipe)
	}
	switch k {
	case safe:
		return
	case root:
		called := a.t.Lookup(n.Name)
		if called == nil || called.Tree == nil {
			return // fails when executed
		}
		if a.entered[n.Name] {
			a.reads.Unknown = true // recursion: give up rather than follow it
			return
		}
		if a.analysed[n.Name] {
			return
		}
		a.entered[n.Name], a.analysed[n.Name] = true, true
		a.walkTree(called.Tree, root, false)
		delete(a.entered, n.Name)
	default:
		a.reads.Unknown = true
	}
}

// bind declares or assigns the variables of p: one variable gets last,
// two get first and last (a range's key and element).
func (a *analyzer) bind(p *parse.PipeNode, first, last kind) {
	for i, v := range p.Decl {
		k := last
		if len(p.Decl) == 2 && i == 0 {
			k = first
		}
		if p.IsAssign {
			if b := a.lookup(v.Ident[0]); b != nil {
				a.grow(b, k)
			}
			continue
		}
		info := a.vars[v]
		if info == nil {
			info = &variable{kind: k}
			a.vars[v] = info
		}
		a.grow(info, k)
		a.scope = append(a.scope, binding{name: v.Ident[0], v: info})
	}
}

func (a *analyzer) grow(v *variable, k kind) {
	if j := join(v.kind, k); j != v.kind {
		v.kind, a.changed = j, true
	}
	if v.kind == unknownKind {
		a.reads.Unknown = true
	}
}

// lookup finds the variable name refers to, and refuses every open
// candidate range it was declared outside of.
func (a *analyzer) lookup(name string) *variable {
	for i := len(a.scope) - 1; i >= 0; i-- {
		if a.scope[i].name != name {
			continue
		}
		for _, c := range a.open {
			if i < c.base {
				a.refused[c.node] = true
			}
		}
		return a.scope[i].v
	}
	return nil
}

// pipe returns the kind of p's value.
func (a *analyzer) pipe(p *parse.PipeNode) kind {
	if p == nil {
		return safe
	}
	k, piped := safe, false
	for _, c := range p.Cmds {
		k = a.command(c, k, piped)
		piped = true
	}
	return k
}

// command returns the kind of c's value; in a pipeline, prev is the value
// handed to it as its last argument.
func (a *analyzer) command(c *parse.CommandNode, prev kind, piped bool) kind {
	if len(c.Args) == 0 {
		return safe
	}
	if _, fn := c.Args[0].(*parse.IdentifierNode); fn || len(c.Args) > 1 || piped {
		// A function (or a method with arguments) sees its arguments
		// whole: the data or .Objects given to one may be read anywhere.
		args := c.Args
		if fn {
			args = args[1:]
		}
		given := []kind{}
		if piped {
			given = append(given, prev)
		}
		for _, arg := range args {
			given = append(given, a.arg(arg))
		}
		for _, k := range given {
			if k != safe {
				a.reads.Unknown = true
			}
		}
		if fn {
			return safe
		}
	}
	return a.arg(c.Args[0])
}

func (a *analyzer) arg(n parse.Node) kind {
	switch n := n.(type) {
	case *parse.DotNode:
		return a.dot
	case *parse.VariableNode:
		v := a.lookup(n.Ident[0])
		if v == nil {
			return safe // fails to parse
		}
		return a.fields(v.kind, n.Ident[1:])
	case *parse.FieldNode:
		return a.fields(a.dot, n.Ident)
	case *parse.ChainNode:
		return a.fields(a.arg(n.Node), n.Field)
	case *parse.PipeNode:
		return a.pipe(n)
	}
	return safe // literals, nil, a function's name (a call without arguments)
}

// fields returns the kind of the value reached from one of kind k through
// the field names, and records the types read.
func (a *analyzer) fields(k kind, names []string) kind {
	for _, f := range names {
		switch k {
		case root:
			switch f {
			case "Objects":
				k = objectsMap
			case "Revision":
				a.reads.Revision = true
				k = safe
			default:
				k = safe // .Object, .Node
			}
		case objectsMap:
			a.types[f] = true
			k = safe
		case unknownKind:
			a.reads.Unknown = true
			return k
		default:
			return safe
		}
	}
	return k
}
