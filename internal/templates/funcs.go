package templates

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"text/template"

	"github.com/Masterminds/sprig/v3"
)

// A template is a pure function of its data: the same objects render the
// same bytes on every node and in every run. Templates get an explicit
// allow-list of Sprig's functions; everything else Sprig has is excluded
// with a reason (excluded), and a test keeps the two lists equal to
// Sprig's, so that a Sprig upgrade cannot add a function unseen.

// Reasons for excluding a function, as the load error states them.
const (
	whyClock  = "not deterministic: every node and every run would render different bytes (it reads the clock or the node's time zone); put the time in the object data"
	whyRandom = "not deterministic: every node and every run would render different bytes (it is random); put the value in the object data"
	whyKeys   = "not deterministic: every node and every run would render different bytes (it makes a key, a salt or an IV); put secrets in the object data"
	whyCost   = "a memory-hard key derivation (32 MiB per call, for every object in every run); derive the secret where it is made and put it in the object data"
	whyEnv    = "reads the agent's environment, which differs per node and holds its credentials"
	whyDNS    = "not deterministic: it asks DNS at render time, so nodes and runs can differ; put the address in the object data"
)

// excluded maps each Sprig function templates cannot call to the reason.
var excluded = map[string]string{
	"ago": whyClock, "date": whyClock, "dateInZone": whyClock, "date_in_zone": whyClock,
	"dateModify": whyClock, "date_modify": whyClock, "mustDateModify": whyClock, "must_date_modify": whyClock,
	"now": whyClock, "htmlDate": whyClock, "htmlDateInZone": whyClock, "toDate": whyClock,
	"mustToDate": whyClock, "unixEpoch": whyClock, "durationRound": whyClock,

	"randAlphaNum": whyRandom, "randAlpha": whyRandom, "randAscii": whyRandom, "randNumeric": whyRandom,
	"randBytes": whyRandom, "randInt": whyRandom, "uuidv4": whyRandom, "shuffle": whyRandom,

	"genPrivateKey": whyKeys, "genCA": whyKeys, "genCAWithKey": whyKeys, "genSelfSignedCert": whyKeys,
	"genSelfSignedCertWithKey": whyKeys, "genSignedCert": whyKeys, "genSignedCertWithKey": whyKeys,
	"buildCustomCert": whyKeys, "bcrypt": whyKeys, "htpasswd": whyKeys, "encryptAES": whyKeys,
	"derivePassword": whyCost,

	"env": whyEnv, "expandenv": whyEnv,
	"getHostByName": whyDNS,
}

// allowed lists the Sprig functions templates may call, by group. Each is
// a pure function of its arguments. The functions that change a dict
// (set, unset, merge, mergeOverwrite and their must forms) only change
// one the template made itself (see Dict), and keys and values are sorted.
var allowed = []string{
	// strings
	"abbrev", "abbrevboth", "camelcase", "cat", "contains", "hasPrefix", "hasSuffix", "indent", "initials",
	"kebabcase", "lower", "nindent", "nospace", "plural", "quote", "repeat", "replace", "snakecase", "squote",
	"substr", "swapcase", "title", "trim", "trimAll", "trimPrefix", "trimSuffix", "trimall", "trunc", "untitle",
	"upper", "wrap", "wrapWith", "hello", "toString", "toStrings", "join", "split", "splitList", "splitn",
	"sortAlpha", "regexFind", "regexFindAll", "regexMatch", "regexQuoteMeta", "regexReplaceAll",
	"regexReplaceAllLiteral", "regexSplit", "mustRegexFind", "mustRegexFindAll", "mustRegexMatch",
	"mustRegexReplaceAll", "mustRegexReplaceAllLiteral", "mustRegexSplit", "duration",
	// numbers
	"add", "add1", "add1f", "addf", "sub", "subf", "mul", "mulf", "div", "divf", "mod", "max", "maxf", "min",
	"minf", "biggest", "ceil", "floor", "round", "atoi", "int", "int64", "float64", "toDecimal", "seq", "until",
	"untilStep",
	// encodings and digests
	"b32dec", "b32enc", "b64dec", "b64enc", "adler32sum", "sha1sum", "sha256sum", "sha512sum", "decryptAES",
	"toJson", "toPrettyJson", "toRawJson", "fromJson", "mustToJson", "mustToPrettyJson", "mustToRawJson",
	"mustFromJson",
	// paths and URLs (of the strings given; nothing is read)
	"base", "dir", "ext", "clean", "isAbs", "osBase", "osClean", "osDir", "osExt", "osIsAbs", "urlParse", "urlJoin",
	// defaults, flow and types
	"default", "empty", "coalesce", "all", "any", "ternary", "fail", "typeOf", "typeIs", "typeIsLike", "kindOf",
	"kindIs", "deepEqual", "semver", "semverCompare",
	// lists
	"list", "tuple", "append", "push", "mustAppend", "mustPush", "prepend", "mustPrepend", "first", "mustFirst",
	"last", "mustLast", "rest", "mustRest", "initial", "mustInitial", "reverse", "mustReverse", "uniq", "mustUniq",
	"without", "mustWithout", "has", "mustHas", "compact", "mustCompact", "slice", "mustSlice", "concat", "chunk",
	"mustChunk",
	// dicts
	"dict", "get", "set", "unset", "hasKey", "pluck", "dig", "keys", "values", "pick", "omit", "merge",
	"mergeOverwrite", "mustMerge", "mustMergeOverwrite", "deepCopy", "mustDeepCopy",
}

// FuncMap returns the functions available to templates.
func FuncMap() template.FuncMap {
	all := sprig.TxtFuncMap()
	fm := make(template.FuncMap, len(allowed))
	for _, name := range allowed {
		fm[name] = all[name]
	}
	owned(fm, all)
	cachedRegexps(fm)
	bound(fm)
	boundGrowth(fm)
	return fm
}

// parseFuncs is FuncMap with a stand-in for each excluded function, so
// that a template calling one parses and then fails the check that names
// every such call and its reason (see checkExcluded).
func parseFuncs() template.FuncMap {
	fm := FuncMap()
	for name := range excluded {
		fm[name] = func(...any) (string, error) { return "", fmt.Errorf("%s: %s", name, excluded[name]) }
	}
	return fm
}

// Excluded returns the reason a template cannot call fn, or "" when it
// may (or fn is no Sprig function).
func Excluded(fn string) string { return excluded[fn] }

// Dict is a dict a template made (with dict, deepCopy, pick or omit): the
// only kind set, unset, merge and mergeOverwrite change. Object data is
// shared by every configuration and every render, so a function that
// changed it would change what other files see; those functions refuse it.
type Dict map[string]any

// owned replaces Sprig's dict functions so that the template's own dicts
// are Dicts, the changing functions refuse every other map, and keys and
// values come in key order (Sprig's follow Go's random map order).
func owned(fm, sp template.FuncMap) {
	deepCopy := sp["mustDeepCopy"].(func(any) (any, error))
	mustMerge := sp["mustMerge"].(func(map[string]any, ...map[string]any) (any, error))
	mustMergeOverwrite := sp["mustMergeOverwrite"].(func(map[string]any, ...map[string]any) (any, error))
	pick := sp["pick"].(func(map[string]any, ...string) map[string]any)
	omit := sp["omit"].(func(map[string]any, ...string) map[string]any)
	dict := sp["dict"].(func(...any) map[string]any)

	fm["dict"] = func(v ...any) Dict { return Dict(dict(v...)) }
	fm["pick"] = func(d map[string]any, k ...string) Dict { return Dict(pick(d, k...)) }
	fm["omit"] = func(d map[string]any, k ...string) Dict { return Dict(omit(d, k...)) }
	fm["mustDeepCopy"] = func(v any) (any, error) { return ownCopy(deepCopy, v) }
	fm["deepCopy"] = func(v any) (any, error) { return ownCopy(deepCopy, v) }
	fm["set"] = func(d any, k string, v any) (Dict, error) {
		own, err := mine("set", d)
		if err == nil {
			own[k] = v
		}
		return own, err
	}
	fm["unset"] = func(d any, k string) (Dict, error) {
		own, err := mine("unset", d)
		if err == nil {
			delete(own, k)
		}
		return own, err
	}
	for name, merge := range map[string]func(map[string]any, ...map[string]any) (any, error){
		"merge": mustMerge, "mustMerge": mustMerge, "mergeOverwrite": mustMergeOverwrite, "mustMergeOverwrite": mustMergeOverwrite,
	} {
		fm[name] = func(dst any, srcs ...map[string]any) (Dict, error) {
			own, err := mine(name, dst)
			if err != nil {
				return nil, err
			}
			// A merge writes into the maps nested in dst, and those may be
			// object data that dst only points to: merge into copies.
			for k, v := range own {
				if own[k], err = deepCopy(v); err != nil {
					return nil, err
				}
			}
			_, err = merge(own, srcs...)
			return own, err
		}
	}
	fm["keys"] = func(dicts ...map[string]any) []string {
		var keys []string
		for _, d := range dicts {
			keys = append(keys, slices.Collect(maps.Keys(d))...)
		}
		sort.Strings(keys)
		return keys
	}
	fm["values"] = func(d map[string]any) []any {
		values := make([]any, 0, len(d))
		for _, k := range slices.Sorted(maps.Keys(d)) {
			values = append(values, d[k])
		}
		return values
	}
}

// mine returns d when the template made it, and otherwise the error that
// fn cannot change it.
func mine(fn string, d any) (Dict, error) {
	if own, ok := d.(Dict); ok {
		return own, nil
	}
	return nil, fmt.Errorf("%s: cannot change a %T the template did not make: object data is shared with every other file; change a copy (deepCopy, or a dict of your own)", fn, d)
}

// ownCopy is deepCopy, whose copy of a map is the template's own Dict.
func ownCopy(deepCopy func(any) (any, error), v any) (any, error) {
	c, err := deepCopy(v)
	if m, ok := c.(map[string]any); ok {
		return Dict(m), err
	}
	if m, ok := c.(Dict); ok {
		return m, err
	}
	return c, err
}
