package templates

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/Masterminds/sprig/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The cached regexMatch and mustRegexMatch answer as Sprig's do, for
// patterns that compile and for those that do not.
func TestCachedRegexMatchAnswersAsSprigDoes(t *testing.T) {
	fm, sp := FuncMap(), sprig.TxtFuncMap()
	match, spMatch := fm["regexMatch"].(func(string, string) bool), sp["regexMatch"].(func(string, string) bool)
	must, spMust := fm["mustRegexMatch"].(func(string, string) (bool, error)), sp["mustRegexMatch"].(func(string, string) (bool, error))
	for _, c := range [][2]string{
		{`^[a-z_][a-z0-9_-]{0,31}$`, "alice"}, {`^[a-z_][a-z0-9_-]{0,31}$`, "Alice"}, {`^[a-z]+$`, ""},
		{`(`, "x"}, {`[`, ""}, {`\`, `\`}, {"", ""}, {`a|b`, "c"}, {`(?i)A`, "a"},
	} {
		for i := 0; i < 2; i++ { // the second time from the cache
			if i == 1 {
				remember(c[0])
			}
			assert.Equal(t, spMatch(c[0], c[1]), match(c[0], c[1]), "regexMatch %q %q", c[0], c[1])
			ok, err := must(c[0], c[1])
			spOK, spErr := spMust(c[0], c[1])
			assert.Equal(t, spOK, ok, "mustRegexMatch %q %q", c[0], c[1])
			assert.Equal(t, spErr == nil, err == nil, "mustRegexMatch %q %q: %v", c[0], c[1], err)
		}
	}
}

// A pattern from object data never enters the cache, and the literal
// patterns of templates (which a release chooses) keep little memory
// whatever they are: hostile ones (classes of many ranges, repeated;
// anchored classes, which regexp's one-pass form copies into every ^
// before them; found by two attack reviews) are measured on the heap
// after a collection. A pattern that fails to compile is not kept.
func TestTheRegexpCacheIsBounded(t *testing.T) {
	hostile := []func(int) string{
		repeated(`\pL`), repeated(`[^\p{Ll}\p{Lu}]`), repeated(`[^\p{Ll}\p{Lu}]{1000}`), repeated(`\p{Han}{0,1000}`), repeated(`[a-z]{1000}`),
		anchored(`\P{Ll}`), anchored(`[\p{Ll}\p{Mn}\p{Po}\p{So}\p{Lo}\p{Nd}\p{Mc}]`), anchored(`(?i)[\p{Ll}\p{Lu}]`),
	}
	match := FuncMap()["regexMatch"].(func(string, string) bool)
	for i := range 50 {
		p := hostile[i%len(hostile)](i)
		match(p, "x")
		regexps.Lock()
		kept := regexps.m[p] != nil
		regexps.Unlock()
		require.False(t, kept, "a pattern given at render time is not kept: %q", p)
	}

	before := heap()
	for i := range 800 {
		p := hostile[i%len(hostile)](i)
		require.LessOrEqual(t, len(p), maxPatternBytes)
		_, err := Parse("t", fmt.Sprintf("{{ regexMatch %q .s }}", p))
		require.NoError(t, err)
		regexps.Lock()
		within := regexps.weight <= maxCacheWeight
		regexps.Unlock()
		require.True(t, within, "after %d patterns", i+1)
	}
	kept := heap() - before
	assert.Less(t, kept, int64(32<<20), "the cache keeps %d MB", kept>>20)
	assert.Greater(t, weight(`[a-z]{1000}[a-z]{1000}`), int64(maxEntryWeight), "22 bytes, 2,000 instructions: not kept")
	remember("(")
	regexps.Lock()
	defer regexps.Unlock()
	assert.NotContains(t, regexps.m, "(")
}

// repeated makes patterns of unit repeated up to maxPatternBytes.
func repeated(unit string) func(int) string {
	return func(i int) string {
		return fmt.Sprintf("x%d", i) + strings.Repeat(unit, (maxPatternBytes-8)/len(unit))
	}
}

// anchored makes patterns of many ^ before class, up to maxPatternBytes.
func anchored(class string) func(int) string {
	return func(i int) string {
		p := fmt.Sprintf("^x%d", i)
		return p + strings.Repeat("^", maxPatternBytes-len(p)-len(class)-1) + class + "$"
	}
}

// heap is the live heap after a collection.
func heap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// The example's patterns are kept: each weighs less than maxEntryWeight,
// and a template's literal pattern, given directly or in a pipeline, is
// found when the template is parsed.
func TestTheExamplesPatternsAreKept(t *testing.T) {
	for _, p := range []string{
		`^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$`, `^[a-z_][a-z0-9_-]{0,31}$`,
		`^(@(reboot|yearly|annually|monthly|weekly|daily|hourly)|([0-9*/,-]+ ){4}[0-9*/,A-Za-z-]+)$`, `[\x00-\x1f\x7f]`,
	} {
		assert.LessOrEqual(t, weight(p), int64(maxEntryWeight), p)
	}
	_, err := Parse("t", `{{ if regexMatch "^lit-a$" .a }}{{ end }}{{ .b | mustRegexMatch "^lit-b$" }}{{ regexReplaceAll "lit-c" .c "x" }}`)
	require.NoError(t, err)
	regexps.Lock()
	defer regexps.Unlock()
	for _, p := range []string{"^lit-a$", "^lit-b$", "lit-c"} {
		assert.Contains(t, regexps.m, p)
	}
}
