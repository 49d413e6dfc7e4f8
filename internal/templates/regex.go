package templates

import (
	"regexp"
	"regexp/syntax"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"
)

// regexps caches the patterns templates match with. The example's
// templates check every domain, user and schedule with regexMatch, and
// Sprig compiles the pattern on every call: 7% of the CPU of a per-file
// event (`make bench`, perfile). Only a template's own literal patterns
// are kept, found when it is parsed (rememberLiterals): a pattern from
// object data is compiled on each call, as in Sprig, and never enters
// the cache. A release could still hold patterns that compile into
// megabytes, so what is kept is bounded by an estimate of its compiled
// size (weight): a pattern of more than maxPatternBytes or
// maxEntryWeight is compiled on each call, and the cache starts over
// when the next entry would take it past maxCacheWeight. A pattern that
// does not compile is not kept; the call fails as before.
var regexps = struct {
	sync.Mutex
	m      map[string]*regexp.Regexp
	weight int64
}{m: map[string]*regexp.Regexp{}}

const (
	maxPatternBytes = 256
	maxEntryWeight  = 192 << 10
	maxCacheWeight  = 8 << 20
)

// regexFuncs are the functions whose first argument is a pattern.
var regexFuncs = map[string]bool{
	"regexMatch": true, "mustRegexMatch": true, "regexReplaceAll": true, "mustRegexReplaceAll": true,
	"regexReplaceAllLiteral": true, "mustRegexReplaceAllLiteral": true,
}

// compile is regexp.Compile, from the cache when pattern is a template's
// literal kept there. A *regexp.Regexp is safe for concurrent use, so
// renders share it.
func compile(pattern string) (*regexp.Regexp, error) {
	regexps.Lock()
	re := regexps.m[pattern]
	regexps.Unlock()
	if re != nil {
		return re, nil
	}
	return regexp.Compile(pattern)
}

// rememberLiterals keeps the literal patterns t's templates give the
// regex functions ({{ regexMatch "^[a-z]+$" .x }}, or the same in a
// pipeline).
func rememberLiterals(t *template.Template) {
	walkTemplates(t, func(_ *parse.Tree, n parse.Node) {
		cmd, ok := n.(*parse.CommandNode)
		if !ok || len(cmd.Args) < 2 {
			return
		}
		fn, ok := cmd.Args[0].(*parse.IdentifierNode)
		lit, isLit := cmd.Args[1].(*parse.StringNode)
		if ok && isLit && regexFuncs[fn.Ident] {
			remember(lit.Text)
		}
	})
}

// remember keeps pattern compiled, within the cache's bounds.
func remember(pattern string) {
	if len(pattern) > maxPatternBytes {
		return
	}
	regexps.Lock()
	known := regexps.m[pattern] != nil
	regexps.Unlock()
	if known {
		return
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return
	}
	w := weight(pattern)
	if w > maxEntryWeight {
		return
	}
	regexps.Lock()
	defer regexps.Unlock()
	if regexps.m[pattern] != nil {
		return
	}
	if regexps.weight+w > maxCacheWeight {
		clear(regexps.m)
		regexps.weight = 0
	}
	regexps.m[strings.Clone(pattern)] = re
	regexps.weight += w
}

// instBytes is what one instruction of a compiled program may hold, in
// both of the forms regexp keeps (the program, and its one-pass copy).
const instBytes = 2 * 48

// weight estimates, generously, the memory a compiled pattern keeps: its
// text; for each node of the parsed pattern, repeated as often as the
// program repeats it, an instruction and its ranges; and the rune sets of
// its one-pass form (onePassWeight). Past maxEntryWeight the count stops:
// the pattern is not kept anyway.
func weight(pattern string) int64 {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return maxEntryWeight + 1
	}
	w := int64(len(pattern)) + nodeWeight(re)
	if w > maxEntryWeight {
		return w
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return maxEntryWeight + 1
	}
	return w + onePassWeight(prog)
}

func nodeWeight(re *syntax.Regexp) int64 {
	w := int64(instBytes + 2*4*len(re.Rune))
	for _, sub := range re.Sub {
		w += nodeWeight(sub)
		if w > maxEntryWeight {
			return w
		}
	}
	if re.Op == syntax.OpRepeat {
		n := int64(max(re.Max, re.Min, 1))
		w = min(w*n, maxEntryWeight+1)
	}
	return w
}

// onePassWeight bounds the rune sets of the one-pass form regexp builds
// for an anchored program of under 1,000 instructions (regexp/onepass.go):
// each instruction keeps the runes that may come next, 4 bytes each and 2
// more of its table, which an alternation takes from both of its branches
// and an empty-width, capture or no-op instruction from the next one, and
// which case folding may multiply by up to 4. An attack review kept 239 MB
// in 96 patterns of one class after many ^ before this was counted.
func onePassWeight(prog *syntax.Prog) int64 {
	if len(prog.Inst) >= 1000 || prog.Start == 0 {
		return 0
	}
	if first := prog.Inst[prog.Start]; first.Op != syntax.InstEmptyWidth || syntax.EmptyOp(first.Arg)&syntax.EmptyBeginText == 0 {
		return 0
	}
	const runeBytes = 6
	sets := make([]int64, len(prog.Inst))
	state := make([]uint8, len(prog.Inst)) // 0 not seen, 1 on the path, 2 done
	var set func(pc uint32) int64
	set = func(pc uint32) int64 {
		switch state[pc] {
		case 1: // a loop without a rune on it adds nothing new
			return 0
		case 2:
			return sets[pc]
		}
		state[pc] = 1
		inst := &prog.Inst[pc]
		var n int64
		switch inst.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			n = set(inst.Out) + set(inst.Arg)
		case syntax.InstEmptyWidth, syntax.InstCapture, syntax.InstNop:
			n = set(inst.Out)
		case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			n = 4 * int64(max(len(inst.Rune), 2))
		}
		sets[pc], state[pc] = min(n, maxEntryWeight), 2
		return sets[pc]
	}
	var w int64
	for pc := range prog.Inst {
		w += runeBytes * set(uint32(pc))
		if w > maxEntryWeight {
			break
		}
	}
	return w
}

// cachedRegexps replaces Sprig's regexMatch and mustRegexMatch with the
// same functions over compile: a pattern that does not compile matches
// nothing (regexMatch) or is the error (mustRegexMatch), as in Sprig.
func cachedRegexps(fm template.FuncMap) {
	fm["regexMatch"] = func(regex, s string) bool {
		re, err := compile(regex)
		return err == nil && re.MatchString(s)
	}
	fm["mustRegexMatch"] = func(regex, s string) (bool, error) {
		re, err := compile(regex)
		if err != nil {
			return false, err
		}
		return re.MatchString(s), nil
	}
}
