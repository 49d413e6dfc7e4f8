package render_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/internal/render"
)

func lines(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

func TestUnified(t *testing.T) {
	tests := []struct {
		name             string
		old, new         string
		oldExist, newExt bool
		want             string
	}{
		{"equal", "a\n", "a\n", true, true, ""},
		{"create", "", "a\nb\n", false, true, "--- /dev/null\n+++ b/x\n@@ -0,0 +1,2 @@\n+a\n+b\n"},
		{"create empty", "", "", false, true, "--- /dev/null\n+++ b/x\n"},
		{"remove", "a\n", "", true, false, "--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n"},
		{"no newline", "a\n", "a", true, true, "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+a\n\\ No newline at end of file\n"},
		{"two hunks", lines(1, 20), strings.Replace(strings.Replace(lines(1, 20), "line 2\n", "two\n", 1), "line 18\n", "eighteen\n", 1), true, true,
			"--- a/x\n+++ b/x\n@@ -1,5 +1,5 @@\n line 1\n-line 2\n+two\n line 3\n line 4\n line 5\n" +
				"@@ -15,6 +15,6 @@\n line 15\n line 16\n line 17\n-line 18\n+eighteen\n line 19\n line 20\n"},
		{"close changes share a hunk", lines(1, 10), strings.Replace(strings.Replace(lines(1, 10), "line 3\n", "", 1), "line 8\n", "", 1), true, true,
			"--- a/x\n+++ b/x\n@@ -1,10 +1,8 @@\n line 1\n line 2\n-line 3\n line 4\n line 5\n line 6\n line 7\n-line 8\n line 9\n line 10\n"},
		{"escapes", "", "title \x1b]0;pwned\x07\r\n", false, true, "--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+title \\x1b]0;pwned\\a\\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render.Unified("/x", []byte(tt.old), []byte(tt.new), tt.oldExist, tt.newExt)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestEscape(t *testing.T) {
	assert.Equal(t, "plain\ttext é", render.Escape("plain\ttext é"))
	assert.Equal(t, `a\x1b[31mb\x00`, render.Escape("a\x1b[31mb\x00"))
	assert.Equal(t, `bad\xff`, render.Escape("bad\xff"))
	assert.Equal(t, `\u009b`, render.Escape("\u009b"), "C1 control (CSI)")
	assert.Equal(t, `invoice\u202egpj.exe`, render.Escape("invoice\u202egpj.exe"), "a bidi override (Cf)")
	assert.Equal(t, `a\u200bb\ufeff\u2066x\u2069`, render.Escape("a\u200bb\ufeff\u2066x\u2069"), "zero-width and isolate characters (Cf)")
}
