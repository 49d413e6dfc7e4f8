package templates

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every function a template may call, Sprig's and text/template's own, is
// either bounded (its output is sized before it is made) or listed as
// linear with a reason: a function added unseen fails here.
func TestEveryFunctionIsBoundedOrLinear(t *testing.T) {
	for _, name := range append(slices.Clone(allowed), Builtins...) {
		bounded := slices.Contains(boundedNames, name)
		_, lin := linear[name]
		assert.True(t, bounded != lin, "%s: bounded %v, linear %v: exactly one", name, bounded, lin)
	}
	for name := range linear {
		assert.True(t, slices.Contains(allowed, name) || slices.Contains(Builtins, name), "%s is listed but not callable", name)
	}
	fm := FuncMap()
	for _, name := range boundedNames {
		assert.Contains(t, fm, name, "a bounded function is replaced in FuncMap")
	}
}

// Reproduction 6: each call that made every agent die of out-of-memory
// is refused with an error, before it allocates; ordinary calls work.
func TestAGrowingCallIsRefusedBeforeItAllocates(t *testing.T) {
	big := strings.Repeat("x", 300<<10)
	for _, tc := range []struct {
		name, text string
		data       map[string]any
		want       string
	}{
		{"indent 2e10", `{{ indent (int .n) "x" }}`, map[string]any{"n": 2e10}, "indent would make"},
		{"nindent 2e10", `{{ nindent (int .n) "x\nx" }}`, map[string]any{"n": 2e10}, "nindent would make"},
		{"replace every gap", `{{ replace "" .s .s }}`, map[string]any{"s": big}, "replace would make"},
		{"wrapWith", `{{ wrapWith 1 .s .s }}`, map[string]any{"s": big}, "wrapWith would make"},
		{"regexReplaceAll", `{{ regexReplaceAll "" .s .s }}`, map[string]any{"s": big}, "regexReplaceAll would make"},
		{"regexReplaceAll $0", `{{ regexReplaceAll ".*" .s "$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0" }}`, map[string]any{"s": big}, "regexReplaceAll would make"},
		{"regexReplaceAllLiteral", `{{ regexReplaceAllLiteral "" .s .s }}`, map[string]any{"s": big}, "would make"},
		{"join", `{{ join .s (until 100000) }}`, map[string]any{"s": big}, "join would make"},
		{"printf *", `{{ printf "%*d" (int .n) 1 }}`, map[string]any{"n": 2e9}, "(*) is not allowed"},
		{"printf from data", `{{ printf .f 1 }}`, map[string]any{"f": "%2000000000d"}, "a width or precision over"},
		{"toPrettyJson deep", `{{ toPrettyJson .d }}`, map[string]any{"d": nest(20000)}, "toPrettyJson would make"},
		{"split every rune", `{{ splitList "" .s }}`, map[string]any{"s": strings.Repeat("x", MaxSequence+2)}, "over the limit"},
		{"repeat", `{{ repeat (int .n) "x" }}`, map[string]any{"n": 2e10}, "over the limit"},
		{"printf %v of a list", `{{ printf "%4096v" .l }}`, map[string]any{"l": make([]any, 1000)}, "with a list or map argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := Parse(tc.name, tc.text)
			require.NoError(t, err)
			var out strings.Builder
			err = tpl.Execute(&out, tc.data)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	for _, tc := range []struct{ text, want string }{
		{`{{ indent 2 "a\nb" }}`, "  a\n  b"},
		{`{{ replace "a" "bb" "aXa" }}`, "bbXbb"},
		{`{{ regexReplaceAll "(a)" "xay" "<$1>" }}`, "x<a>y"},
		{`{{ join "," (list 1 2) }}`, "1,2"},
		{`{{ printf "%-5s|%05.1f" "a" 3.14159 }}`, "a    |003.1"},
		{`{{ toPrettyJson (list 1) }}`, "[\n  1\n]"},
		{`{{ wrap 2 "abcd" }}`, "ab\ncd"},
		{`{{ splitList "," "a,b" | len }}`, "2"},
		{`{{ list "b" "a" "b" 1.0 1.0 (list 1) (list 1) | uniq | toJson }}`, `["b","a",1,[1]]`},
	} {
		tpl, err := Parse("ok", tc.text)
		require.NoError(t, err)
		var out strings.Builder
		require.NoError(t, tpl.Execute(&out, nil), tc.text)
		assert.Equal(t, tc.want, out.String(), tc.text)
	}
}

// nest is n lists, each inside the next.
func nest(n int) any {
	var v any = "x"
	for range n {
		v = []any{v}
	}
	return v
}

// uniq is linear: 150,000 distinct strings from data (a 1.4 MB object)
// took a render past its budget with Sprig's pairwise uniq.
func TestUniqOfManyDistinctValuesIsLinear(t *testing.T) {
	l := make([]any, 150000)
	for i := range l {
		l[i] = fmt.Sprint(i)
	}
	tpl, err := Parse("u", `{{ uniq .l | len }}`)
	require.NoError(t, err)
	var out strings.Builder
	require.NoError(t, tpl.Execute(&out, map[string]any{"l": l}))
	assert.Equal(t, "150000", out.String())
}
