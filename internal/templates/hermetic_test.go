package templates

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/Masterminds/sprig/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every Sprig function is either allowed or excluded with a reason, never
// both and never neither: a Sprig upgrade that adds a function fails here
// until someone decides.
func TestEverySprigFunctionIsAllowedOrExcluded(t *testing.T) {
	sp := slices.Sorted(maps.Keys(sprig.TxtFuncMap()))
	var listed []string
	for _, name := range allowed {
		assert.Empty(t, excluded[name], "%s is both allowed and excluded", name)
		listed = append(listed, name)
	}
	listed = append(listed, slices.Collect(maps.Keys(excluded))...)
	slices.Sort(listed)
	assert.Equal(t, sp, slices.Compact(slices.Clone(listed)), "allowed + excluded = Sprig's functions")
	assert.Len(t, listed, len(sp), "no function listed twice")
	for _, name := range sprigNonHermetic {
		assert.NotEmpty(t, excluded[name], "Sprig itself calls %s not hermetic", name)
	}
	assert.Len(t, FuncMap(), len(allowed)+1, "the allowed functions, and a bounded printf")
}

// sprigNonHermetic is what Sprig's HermeticTxtFuncMap leaves out (Sprig
// keeps its list private); ccm's exclusions are a superset.
var sprigNonHermetic = func() []string {
	var out []string
	h := sprig.HermeticTxtFuncMap()
	for name := range sprig.TxtFuncMap() {
		if _, ok := h[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}()

// shared returns object data as the mirror holds it: decoded JSON.
func shared() map[string]any {
	return map[string]any{
		"s": "x", "n": 1.0, "b": true,
		"l": []any{"b", "a", map[string]any{"k": "v"}, []any{"z"}},
		"m": map[string]any{"k": "v", "z": []any{1.0, 2.0}, "deep": map[string]any{"k": "v"}},
	}
}

// No allowed function changes object data, whatever argument it gets in
// whatever position: each is called, by reflection, with the shared data
// (the whole object, its list, its nested map) in each position and
// plausible values in the others, and the data must be as it was.
func TestNoFunctionChangesObjectData(t *testing.T) {
	fm := FuncMap()
	for _, name := range slices.Sorted(maps.Keys(fm)) {
		fn := reflect.ValueOf(fm[name])
		ft := fn.Type()
		counts := []int{ft.NumIn()}
		if ft.IsVariadic() {
			counts = []int{ft.NumIn() - 1, ft.NumIn(), ft.NumIn() + 1}
		}
		for _, n := range counts {
			for pos := range n {
				for _, pick := range []func(map[string]any) any{
					func(d map[string]any) any { return d },
					func(d map[string]any) any { return d["l"] },
					func(d map[string]any) any { return d["m"] },
				} {
					data, want := shared(), shared()
					args, ok := arguments(ft, n, pos, pick(data), data)
					if !ok {
						continue
					}
					call(fn, args)
					require.Equal(t, want, data, "%s with the object data as argument %d of %d changed it", name, pos+1, n)
				}
			}
		}
	}
}

// arguments builds n arguments for a function of type ft: at pos the
// shared value, elsewhere values that make the function do its work
// (dicts that would merge into the shared one, keys it has).
func arguments(ft reflect.Type, n, pos int, value any, data map[string]any) ([]reflect.Value, bool) {
	args := make([]reflect.Value, n)
	for i := range n {
		pt := paramType(ft, i)
		var v any
		switch {
		case i == pos:
			v = value
		case pt.Kind() == reflect.String:
			v = "m"
		case pt.Kind() == reflect.Int, pt.Kind() == reflect.Int64:
			v = 1
		case pt.Kind() == reflect.Map:
			v = map[string]any{"m": map[string]any{"k": "changed", "deep": map[string]any{"k": "changed"}}, "s": "changed"}
		case pt.Kind() == reflect.Slice:
			v = []string{"m", "s"}
		default:
			v = Dict{"m": data["m"], "l": data["l"]} // the template's own dict, holding shared values
		}
		rv := reflect.ValueOf(v)
		if !rv.Type().AssignableTo(pt) {
			if !rv.Type().ConvertibleTo(pt) || pt.Kind() == reflect.String {
				return nil, false
			}
			rv = rv.Convert(pt)
		}
		args[i] = rv
	}
	return args, true
}

func paramType(ft reflect.Type, i int) reflect.Type {
	if ft.IsVariadic() && i >= ft.NumIn()-1 {
		return ft.In(ft.NumIn() - 1).Elem()
	}
	return ft.In(i)
}

// call calls fn; a panic is a refusal, as text/template reports it.
func call(fn reflect.Value, args []reflect.Value) {
	defer func() { _ = recover() }()
	fn.Call(args)
}

func execute(t *testing.T, text string, data any) (string, error) {
	t.Helper()
	tmpl, err := Parse("t", text)
	require.NoError(t, err)
	var b strings.Builder
	err = tmpl.Execute(&b, data)
	return b.String(), err
}

// A template changes only dicts it made; object data, even reached through
// one of its dicts, stays as it was, so configuration c2 can never change
// what c3 renders.
func TestTemplatesCannotChangeObjectData(t *testing.T) {
	for _, text := range []string{
		`{{ $_ := set .Object.Data "k" "mutated" }}`,
		`{{ $_ := unset .Object.Data "s" }}`,
		`{{ $_ := merge .Object.Data (dict "k" "mutated") }}`,
		`{{ $_ := mergeOverwrite .Object.Data.m (dict "k" "mutated") }}`,
		`{{ $_ := set (index .Object.Data.l 2) "k" "mutated" }}`,
	} {
		data := map[string]any{"Object": map[string]any{"Data": shared()}}
		_, err := execute(t, text, data)
		assert.ErrorContains(t, err, "the template did not make: object data is shared", text)
		assert.Equal(t, shared(), data["Object"].(map[string]any)["Data"], text)
	}
	for text, want := range map[string]string{
		`{{ $d := dict "a" 1 }}{{ $_ := set $d "b" 2 }}{{ $_ := unset $d "a" }}{{ toJson $d }}`:                                           `{"b":2}`,
		`{{ $d := dict "m" .Object.Data.m }}{{ $_ := merge $d (dict "m" (dict "k" "changed" "new" 1)) }}{{ toJson $d.m }}`:                `{"deep":{"k":"v"},"k":"v","new":1,"z":[1,2]}`,
		`{{ $d := dict "m" .Object.Data.m }}{{ $_ := mergeOverwrite $d (dict "m" (dict "deep" (dict "k" "changed"))) }}{{ $d.m.deep.k }}`: `changed`,
		`{{ $c := deepCopy .Object.Data }}{{ $_ := set $c "s" "changed" }}{{ $c.s }} {{ .Object.Data.s }}`:                                `changed x`,
		`{{ $p := pick .Object.Data "s" "n" }}{{ $_ := set $p "s" "y" }}{{ toJson $p }}`:                                                  `{"n":1,"s":"y"}`,
		`{{ keys .Object.Data | join "," }} {{ values .Object.Data.m | len }}`:                                                            `b,l,m,n,s 3`,
	} {
		data := map[string]any{"Object": map[string]any{"Data": shared()}}
		got, err := execute(t, text, data)
		require.NoError(t, err, text)
		assert.Equal(t, want, got, text)
		assert.Equal(t, shared(), data["Object"].(map[string]any)["Data"], "the object data is unchanged: %s", text)
	}
}

// Each excluded function fails the parse with the reason, whatever its
// place in the template (an argument, a pipeline, a defined template).
func TestEveryExcludedFunctionFailsTheParseWithItsReason(t *testing.T) {
	for name, why := range excluded {
		for _, text := range []string{
			fmt.Sprintf("{{ %s }}", name),
			fmt.Sprintf("x\n{{ printf \"%%v\" (%s) }}", name),
			fmt.Sprintf("{{ define \"d\" }}{{ 1 | %s }}{{ end }}", name),
		} {
			_, err := Parse("t", text)
			require.Error(t, err, text)
			assert.Contains(t, err.Error(), fmt.Sprintf("function %q is not allowed: %s", name, why), text)
			assert.Regexp(t, `^template: (t|d):[0-9]+:[0-9]+: `, err.Error(), text)
		}
	}
}
