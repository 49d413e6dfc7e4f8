package templates

import (
	"regexp"
	"testing"
)

// vhostPattern is the domain check of examples/ccm/templates/vhost.conf.tmpl.
const vhostPattern = `^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$`

// BenchmarkRegexCompileEach is Sprig's regexMatch: it compiles the pattern on
// every call (the example vhost's domain check: 188 µs and 200 KB).
func BenchmarkRegexCompileEach(b *testing.B) {
	for b.Loop() {
		//lint:ignore SA6000 what Sprig's regexMatch does, measured
		ok, _ := regexp.MatchString(vhostPattern, "www.s1234.example")
		_ = ok
	}
}

// BenchmarkRegexCached is the template's regexMatch of a literal pattern,
// through the cache.
func BenchmarkRegexCached(b *testing.B) {
	remember(vhostPattern) // as parsing the example's vhost template does
	m := FuncMap()["regexMatch"].(func(string, string) bool)
	for b.Loop() {
		_ = m(vhostPattern, "www.s1234.example")
	}
}
