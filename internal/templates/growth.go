package templates

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"unicode/utf8"
)

// One object field must not be able to exhaust the agent's memory: a call
// such as indent 2e10, or replace "" with a 300 KB string over the same
// string, allocates before the render's output budget sees a byte. So
// every function a template may call is either bounded here (its output
// is checked against MaxOutput before it is made) or listed in linear,
// with the reason its output grows at most linearly with its input. A
// test (TestEveryFunctionIsBoundedOrLinear) fails for a function that is
// neither. The render's memory budget (render.MaxRenderHeap) bounds a
// chain of bounded calls.

// MaxOutput is the most bytes one call of a bounded function may return.
const MaxOutput = 16 << 20

// MaxWidth is the widest width or precision printf may pad to.
const MaxWidth = 4096

// linear lists the functions whose output is at most a small constant
// times their input (the data and the template's literals), with why.
var linear = map[string]string{
	// Strings that shrink, or keep, their input.
	"abbrev": "shrinks", "abbrevboth": "shrinks", "trunc": "shrinks", "substr": "shrinks", "initials": "shrinks",
	"nospace": "shrinks", "trim": "shrinks", "trimAll": "shrinks", "trimall": "shrinks", "trimPrefix": "shrinks",
	"trimSuffix": "shrinks", "lower": "same length", "upper": "same length", "title": "same length",
	"untitle": "same length", "swapcase": "same length", "camelcase": "at most its input", "kebabcase": "at most twice its input",
	"snakecase": "at most twice its input", "quote": "at most 6 bytes a byte (escapes)", "squote": "its input and 2 quotes",
	"cat": "its arguments and a space each", "plural": "one of its arguments", "hello": "a constant",
	"toString": "its argument formatted", "toStrings": "its arguments formatted", "contains": "a bool",
	"hasPrefix": "a bool", "hasSuffix": "a bool", "regexMatch": "a bool", "mustRegexMatch": "a bool",
	"regexFind": "a substring", "mustRegexFind": "a substring", "regexQuoteMeta": "at most twice its input",
	"sortAlpha": "its input, sorted", "duration": "a short string",
	// Numbers.
	"add": "a number", "add1": "a number", "add1f": "a number", "addf": "a number", "sub": "a number", "subf": "a number",
	"mul": "a number", "mulf": "a number", "div": "a number", "divf": "a number", "mod": "a number", "max": "a number",
	"maxf": "a number", "min": "a number", "minf": "a number", "biggest": "a number", "ceil": "a number",
	"floor": "a number", "round": "a number", "atoi": "a number", "int": "a number", "int64": "a number",
	"float64": "a number", "toDecimal": "a number",
	// Encodings and digests.
	"b32dec": "shrinks", "b32enc": "8/5 of its input", "b64dec": "shrinks", "b64enc": "4/3 of its input",
	"adler32sum": "a digest", "sha1sum": "a digest", "sha256sum": "a digest", "sha512sum": "a digest",
	"decryptAES": "shrinks", "toJson": "at most 6 bytes a byte", "toRawJson": "at most 6 bytes a byte",
	"mustToJson": "at most 6 bytes a byte", "mustToRawJson": "at most 6 bytes a byte",
	"fromJson": "decodes its input", "mustFromJson": "decodes its input",
	// Paths and URLs.
	"base": "shrinks", "dir": "shrinks", "ext": "shrinks", "clean": "shrinks", "isAbs": "a bool", "osBase": "shrinks",
	"osClean": "shrinks", "osDir": "shrinks", "osExt": "shrinks", "osIsAbs": "a bool", "urlParse": "its input, split",
	"urlJoin": "its input, joined",
	// Defaults, flow and types.
	"default": "one of its arguments", "empty": "a bool", "coalesce": "one of its arguments", "all": "a bool",
	"any": "a bool", "ternary": "one of its arguments", "fail": "an error", "typeOf": "a type name", "typeIs": "a bool",
	"typeIsLike": "a bool", "kindOf": "a kind name", "kindIs": "a bool", "deepEqual": "a bool", "semver": "a version",
	"semverCompare": "a bool",
	// Lists: each holds what it was given (elements are shared, not
	// copied), at most once each.
	"list": "its arguments", "tuple": "its arguments", "append": "its input and one", "push": "its input and one",
	"mustAppend": "its input and one", "mustPush": "its input and one", "prepend": "its input and one",
	"mustPrepend": "its input and one", "first": "an element", "mustFirst": "an element", "last": "an element",
	"mustLast": "an element", "rest": "shrinks", "mustRest": "shrinks", "initial": "shrinks", "mustInitial": "shrinks",
	"reverse": "its input", "mustReverse": "its input", "without": "shrinks",
	"mustWithout": "shrinks", "has": "a bool", "mustHas": "a bool", "compact": "shrinks", "mustCompact": "shrinks",
	"slice": "shrinks", "mustSlice": "shrinks", "concat": "its inputs", "chunk": "its input, grouped",
	"mustChunk": "its input, grouped",
	// Dicts: what they were given, or a copy of it.
	"dict": "its arguments", "get": "an element", "set": "its input and one", "unset": "shrinks", "hasKey": "a bool",
	"pluck": "elements of its input", "dig": "an element", "keys": "its input's keys", "values": "its input's values",
	"pick": "shrinks", "omit": "shrinks", "merge": "a copy of its inputs", "mergeOverwrite": "a copy of its inputs",
	"mustMerge": "a copy of its inputs", "mustMergeOverwrite": "a copy of its inputs", "deepCopy": "a copy of its input",
	"mustDeepCopy": "a copy of its input",
	// text/template's own functions.
	"and": "one of its arguments", "or": "one of its arguments", "not": "a bool", "len": "a number",
	"index": "an element", "eq": "a bool", "ne": "a bool", "lt": "a bool", "le": "a bool", "gt": "a bool", "ge": "a bool",
	"print": "its arguments formatted", "println": "its arguments formatted", "html": "at most 6 bytes a byte",
	"js": "at most 6 bytes a byte", "urlquery": "at most 3 bytes a byte", "call": "object data holds no function to call",
}

// Builtins are text/template's own functions, which a FuncMap may
// replace; printf is bounded (see boundGrowth).
var Builtins = []string{"and", "or", "not", "len", "index", "slice", "eq", "ne", "lt", "le", "gt", "ge",
	"print", "printf", "println", "html", "js", "urlquery", "call"}

// boundedNames lists what boundGrowth replaces (with bound's repeat,
// until, untilStep and seq).
var boundedNames = []string{"indent", "nindent", "replace", "wrap", "wrapWith", "join", "regexReplaceAll",
	"mustRegexReplaceAll", "regexReplaceAllLiteral", "mustRegexReplaceAllLiteral", "regexFindAll",
	"mustRegexFindAll", "regexSplit", "mustRegexSplit", "split", "splitList", "splitn", "toPrettyJson",
	"mustToPrettyJson", "printf", "uniq", "mustUniq", "repeat", "until", "untilStep", "seq"}

// over is the error of a call whose output would pass MaxOutput.
func over(fn string, n int64) error {
	return fmt.Errorf("%s would make %d bytes: over the limit of %d", fn, n, MaxOutput)
}

// checkOut refuses an output size over MaxOutput, or over what is left
// of the render's meter.
func checkOut(fn string, n int64) error {
	if n > MaxOutput || n < 0 {
		return over(fn, n)
	}
	return charge(fn, n)
}

// boundGrowth replaces the functions whose output can grow faster than
// their input with ones that compute the output's size first.
func boundGrowth(fm template.FuncMap) {
	indent := fm["indent"].(func(int, string) string)
	nindent := fm["nindent"].(func(int, string) string)
	fm["indent"] = func(spaces int, v string) (string, error) {
		if err := indentSize("indent", spaces, v); err != nil {
			return "", err
		}
		return indent(spaces, v), nil
	}
	fm["nindent"] = func(spaces int, v string) (string, error) {
		if err := indentSize("nindent", spaces, v); err != nil {
			return "", err
		}
		return nindent(spaces, v), nil
	}
	fm["replace"] = func(old, new, src string) (string, error) {
		n := int64(strings.Count(src, old))
		if err := checkOut("replace", int64(len(src))+n*(int64(len(new))-int64(len(old)))); err != nil {
			return "", err
		}
		return strings.ReplaceAll(src, old, new), nil
	}
	wrapWith := fm["wrapWith"].(func(int, string, string) string)
	wrapN := func(fn string, length int, sep, s string) (string, error) {
		n := int64(len(s)) + (int64(len(s))/int64(max(length, 1))+1)*int64(len(sep))
		if err := checkOut(fn, n); err != nil {
			return "", err
		}
		return wrapWith(length, sep, s), nil
	}
	fm["wrap"] = func(length int, s string) (string, error) { return wrapN("wrap", length, "\n", s) }
	fm["wrapWith"] = func(length int, sep, s string) (string, error) { return wrapN("wrapWith", length, sep, s) }
	join := fm["join"].(func(string, any) string)
	fm["join"] = func(sep string, v any) (string, error) {
		if err := checkOut("join", int64(elements(v))*int64(len(sep))); err != nil {
			return "", err
		}
		out := join(sep, v)
		return out, checkOut("join", int64(len(out)))
	}
	for _, name := range []string{"regexReplaceAll", "mustRegexReplaceAll"} {
		fm[name] = func(regex, s, repl string) (string, error) {
			re, err := compile(regex)
			if err != nil {
				return "", err
			}
			if err := expandSize(name, re, s, repl); err != nil {
				return "", err
			}
			return re.ReplaceAllString(s, repl), nil
		}
	}
	for _, name := range []string{"regexReplaceAllLiteral", "mustRegexReplaceAllLiteral"} {
		fm[name] = func(regex, s, repl string) (string, error) {
			re, err := compile(regex)
			if err != nil {
				return "", err
			}
			n := int64(len(s))
			matches := re.FindAllStringIndex(s, MaxSequence+1)
			if err := checkCount(name+" matches", int64(len(matches))); err != nil {
				return "", err
			}
			for _, m := range matches {
				n += int64(len(repl)) - int64(m[1]-m[0])
			}
			if err := checkOut(name, n); err != nil {
				return "", err
			}
			return re.ReplaceAllLiteralString(s, repl), nil
		}
	}
	for _, name := range []string{"regexFindAll", "mustRegexFindAll", "regexSplit", "mustRegexSplit"} {
		fn := reflect.ValueOf(fm[name])
		fm[name] = func(regex, s string, n int) ([]string, error) {
			if n < 0 || n > MaxSequence {
				n = MaxSequence + 1
			}
			out := fn.Call([]reflect.Value{reflect.ValueOf(regex), reflect.ValueOf(s), reflect.ValueOf(n)})
			if len(out) == 2 && !out[1].IsNil() {
				return nil, out[1].Interface().(error)
			}
			list := out[0].Interface().([]string)
			return list, checkCount(name, int64(len(list)))
		}
	}
	// split and its relatives make an element of every separator: bounded
	// by count, as until is (an element costs more than its bytes).
	split := fm["split"].(func(string, string) map[string]string)
	splitList := fm["splitList"].(func(string, string) []string)
	splitn := fm["splitn"].(func(string, int, string) map[string]string)
	parts := func(fn, sep, s string) error {
		n := int64(strings.Count(s, sep)) + 1
		if sep == "" {
			n = int64(utf8.RuneCountInString(s))
		}
		return checkCount(fn, n)
	}
	fm["split"] = func(sep, s string) (map[string]string, error) {
		if err := parts("split", sep, s); err != nil {
			return nil, err
		}
		return split(sep, s), nil
	}
	fm["splitList"] = func(sep, s string) ([]string, error) {
		if err := parts("splitList", sep, s); err != nil {
			return nil, err
		}
		return splitList(sep, s), nil
	}
	fm["splitn"] = func(sep string, n int, s string) (map[string]string, error) {
		if n < 0 || n > MaxSequence {
			if err := parts("splitn", sep, s); err != nil {
				return nil, err
			}
		}
		return splitn(sep, n, s), nil
	}
	fm["uniq"] = func(list any) ([]any, error) { return uniq("uniq", list) }
	fm["mustUniq"] = func(list any) ([]any, error) { return uniq("mustUniq", list) }
	for _, name := range []string{"toPrettyJson", "mustToPrettyJson"} {
		fm[name] = func(v any) (string, error) { return prettyJSON(name, v) }
	}
	fm["printf"] = func(format string, args ...any) (string, error) {
		if err := checkFormat(format); err != nil {
			return "", err
		}
		if padded(format) {
			for _, a := range args {
				if k := reflect.ValueOf(a).Kind(); k == reflect.Slice || k == reflect.Array || k == reflect.Map {
					// fmt pads every element: %4096v of a long list is gigabytes.
					return "", fmt.Errorf("printf %q: a width or precision with a list or map argument", quoteShort(format))
				}
			}
		}
		out := fmt.Sprintf(format, args...)
		return out, charge("printf", int64(len(out)))
	}
}

// indentSize refuses an indent whose output would be too large.
func indentSize(fn string, spaces int, v string) error {
	if spaces < 0 {
		return fmt.Errorf("%s %d: a negative count", fn, spaces)
	}
	lines := int64(strings.Count(v, "\n")) + 2
	if lines > 0 && int64(spaces) > (MaxOutput-int64(len(v)))/lines {
		return over(fn, int64(spaces)*lines+int64(len(v)))
	}
	return nil
}

// expandSize refuses a replacement whose expansions ($1, ${name}) would
// make too large an output, counting match by match.
func expandSize(fn string, re *regexp.Regexp, s, repl string) error {
	refs := int64(strings.Count(repl, "$"))
	total := int64(len(s))
	var scratch []byte
	matches := re.FindAllStringSubmatchIndex(s, MaxSequence+1)
	if err := checkCount(fn+" matches", int64(len(matches))); err != nil {
		return err
	}
	for _, m := range matches {
		if int64(len(repl))+refs*int64(m[1]-m[0]) > MaxOutput {
			return over(fn, int64(len(repl))+refs*int64(m[1]-m[0]))
		}
		scratch = re.ExpandString(scratch[:0], repl, s, m)
		if total += int64(len(scratch)) - int64(m[1]-m[0]); total > MaxOutput {
			return over(fn, total)
		}
	}
	return nil
}

// elements is how many elements a list has (1 for anything else).
func elements(v any) int {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		return rv.Len()
	}
	return 1
}

// prettyJSON is Sprig's toPrettyJson (two spaces of indent), refused when
// the indentation would make too large an output: each line is indented
// by its depth, so deep data grows quadratically.
func prettyJSON(fn string, v any) (string, error) {
	compact, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var depth, maxDepth, lines int64
	inString, escaped := false, false
	for _, c := range compact {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			depth++
			lines++
			maxDepth = max(maxDepth, depth)
		case c == ']' || c == '}':
			depth--
			lines++
		case c == ',':
			lines++
		}
	}
	if err := checkOut(fn, int64(len(compact))+lines*(2*maxDepth+2)); err != nil {
		return "", err
	}
	out, err := json.MarshalIndent(v, "", "  ")
	return string(out), err
}

// padded reports whether a format has a width or precision.
func padded(format string) bool {
	for i := 0; i < len(format)-1; i++ {
		if format[i] == '%' {
			if c := format[i+1]; (c >= '1' && c <= '9') || c == '.' || c == '-' || c == '0' || c == ' ' || c == '+' || c == '#' {
				return true
			}
			i++
		}
	}
	return false
}

// uniq is Sprig's uniq (first occurrence kept, in order) in linear time
// for the values JSON data holds: Sprig compares every pair with
// reflect.DeepEqual, and 150,000 distinct strings took a render past its
// budget. Values that cannot be map keys (lists, dicts) are compared with
// the ones seen, at most MaxUniqDeep of them.
func uniq(fn string, list any) ([]any, error) {
	rv := reflect.ValueOf(list)
	if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		return nil, fmt.Errorf("%s: cannot find uniq on type %T", fn, list)
	}
	seen := map[any]bool{}
	var deep []any
	out := make([]any, 0, rv.Len())
	for i := range rv.Len() {
		v := rv.Index(i).Interface()
		switch k := reflect.ValueOf(v).Kind(); {
		case v == nil || (k != reflect.Slice && k != reflect.Map && k != reflect.Array && reflect.TypeOf(v).Comparable()):
			if seen[v] {
				continue
			}
			seen[v] = true
		default:
			if slices.ContainsFunc(deep, func(d any) bool { return reflect.DeepEqual(d, v) }) {
				continue
			}
			if deep = append(deep, v); len(deep) > MaxUniqDeep {
				return nil, fmt.Errorf("%s: more than %d lists or dicts to compare", fn, MaxUniqDeep)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// MaxUniqDeep is how many lists or dicts uniq compares pairwise.
const MaxUniqDeep = 4096

// checkFormat refuses a printf format that pads to more than MaxWidth, or
// takes its width or precision from an argument (*), which object data may
// set.
func checkFormat(format string) error {
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		i++
		n := 0
		for ; i < len(format); i++ {
			c := format[i]
			switch {
			case c == '*':
				return fmt.Errorf("printf %q: a width or precision from an argument (*) is not allowed", quoteShort(format))
			case c >= '0' && c <= '9':
				if n = n*10 + int(c-'0'); n > MaxWidth {
					return fmt.Errorf("printf %q: a width or precision over %d", quoteShort(format), MaxWidth)
				}
				continue
			case c == '.' || c == '[' || c == ']':
				n = 0
				continue
			case strings.IndexByte("+-# ", c) >= 0:
				continue
			}
			break
		}
	}
	return nil
}

func quoteShort(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
