package render

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/sergi/go-diff/diffmatchpatch"
)

// contextLines is how many unchanged lines surround each hunk, as diff -u.
const contextLines = 3

type lineOp struct {
	kind byte // ' ', '-' or '+'
	text string
}

// Unified returns a unified diff of old and new, labelled a/name and b/name
// ("/dev/null" for a side that does not exist), or "" if they are equal.
// Control characters are shown escaped (\x1b), so a rendered file cannot
// drive the operator's terminal.
func Unified(name string, old, new []byte, oldExists, newExists bool) string {
	if oldExists == newExists && string(old) == string(new) {
		return ""
	}
	ops := lineDiff(string(old), string(new))
	var b strings.Builder
	from, to := "a"+name, "b"+name
	if !oldExists {
		from = "/dev/null"
	}
	if !newExists {
		to = "/dev/null"
	}
	fmt.Fprintf(&b, "--- %s\n+++ %s\n", Escape(from), Escape(to))
	writeHunks(&b, ops)
	return b.String()
}

// lineDiff diffs two texts line by line.
func lineDiff(a, b string) []lineOp {
	dmp := diffmatchpatch.New()
	ra, rb, lines := dmp.DiffLinesToRunes(a, b)
	diffs := dmp.DiffCharsToLines(dmp.DiffMainRunes(ra, rb, false), lines)
	var ops []lineOp
	for _, d := range diffs {
		kind := byte(' ')
		switch d.Type {
		case diffmatchpatch.DiffDelete:
			kind = '-'
		case diffmatchpatch.DiffInsert:
			kind = '+'
		}
		for _, l := range splitLines(d.Text) {
			ops = append(ops, lineOp{kind: kind, text: l})
		}
	}
	return ops
}

// splitLines splits after each newline, keeping it, so a last line without
// one can be marked.
func splitLines(s string) []string {
	var out []string
	for s != "" {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i+1])
		s = s[i+1:]
	}
	return out
}

func writeHunks(b *strings.Builder, ops []lineOp) {
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		start := max(0, i-contextLines)
		// Extend the hunk while the next change is within 2*context lines.
		end := i
		for j := i; j < len(ops); j++ {
			if ops[j].kind != ' ' {
				end = j
			} else if j-end > 2*contextLines {
				break
			}
		}
		end = min(len(ops), end+contextLines+1)
		writeHunk(b, ops, start, end)
		i = end
	}
}

func writeHunk(b *strings.Builder, ops []lineOp, start, end int) {
	oldLine, newLine := 1, 1
	for _, op := range ops[:start] {
		if op.kind != '+' {
			oldLine++
		}
		if op.kind != '-' {
			newLine++
		}
	}
	var oldN, newN int
	for _, op := range ops[start:end] {
		if op.kind != '+' {
			oldN++
		}
		if op.kind != '-' {
			newN++
		}
	}
	fmt.Fprintf(b, "@@ -%s +%s @@\n", hunkRange(oldLine, oldN), hunkRange(newLine, newN))
	for _, op := range ops[start:end] {
		b.WriteByte(op.kind)
		text, hasNL := strings.CutSuffix(op.text, "\n")
		b.WriteString(Escape(text))
		b.WriteByte('\n')
		if !hasNL {
			b.WriteString("\\ No newline at end of file\n")
		}
	}
}

func hunkRange(line, n int) string {
	if n == 0 {
		line-- // diff -u names the line before an empty range
	}
	if n == 1 {
		return strconv.Itoa(line)
	}
	return fmt.Sprintf("%d,%d", line, n)
}

// Escape makes control characters (other than tab), Unicode format
// characters (category Cf: bidi overrides such as U+202E, zero-width
// characters) and invalid UTF-8 visible as Go escapes, so text printed to
// a terminal can carry neither escape sequences nor text that reads
// differently from what it is.
func Escape(s string) string {
	clean := true
	for _, r := range s {
		if r == unicode.ReplacementChar || hidden(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == unicode.ReplacementChar && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case hidden(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// hidden reports whether r must not reach a terminal as it is.
func hidden(r rune) bool {
	return (unicode.IsControl(r) && r != '\t') || unicode.Is(unicode.Cf, r)
}
