package applier

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/ccm-dev/ccm/internal/render"
)

// palette colours diff lines on a terminal.
type palette struct{ on bool }

func (p palette) paint(code, s string) string {
	if !p.on {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (p palette) diff(d string) string {
	if !p.on {
		return d
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(d, "\n") {
		trimmed := strings.TrimSuffix(line, "\n")
		switch {
		case trimmed == "":
		case strings.HasPrefix(line, "---"), strings.HasPrefix(line, "+++"):
			trimmed = p.paint("1", trimmed)
		case strings.HasPrefix(line, "@@"):
			trimmed = p.paint("36", trimmed)
		case strings.HasPrefix(line, "+"):
			trimmed = p.paint("32", trimmed)
		case strings.HasPrefix(line, "-"):
			trimmed = p.paint("31", trimmed)
		}
		b.WriteString(trimmed)
		if strings.HasSuffix(line, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// WritePlans writes every plan as ccm plan prints it, unified diffs and a
// summary line, colouring diffs for a terminal if color is set. It reports
// whether anything would change.
func WritePlans(w io.Writer, plans []*Plan, color bool) bool {
	pal := palette{on: color}
	var create, change, remove, pending int
	for _, p := range plans {
		if !p.Changed() && !p.PendingOnChange && len(p.Output.Held) == 0 {
			continue
		}
		title := "# configuration " + p.Config.Name
		if p.Orphan {
			title += " (no longer run on this node: its files are removed)"
		}
		fmt.Fprintln(w, pal.paint("1", title))
		failed := map[string]bool{}
		for _, f := range p.Output.Failed {
			failed[f.Ref()] = true
			fmt.Fprintf(w, "! %s would be quarantined at revision %d (its files stay as they are): %s\n", f.Ref(), f.Revision, oneLine(f.Err.Error()))
		}
		for _, ref := range slices.Sorted(maps.Keys(p.Output.Held)) {
			switch by := p.HeldBy[ref]; {
			case failed[ref]:
			case by != "":
				fmt.Fprintf(w, "! %s is held: configuration %s holds it in this run (its files stay as they are)\n", ref, by)
			default:
				fmt.Fprintf(w, "! %s is quarantined at its revision: left out, its files stay as they are (ccm quarantine list)\n", ref)
			}
		}
		if p.Redefined {
			fmt.Fprintln(w, "~ the configuration's definition changed: validate and on_change run once")
		}
		for _, c := range p.Accounts {
			fmt.Fprintln(w, c.Line)
		}
		for _, d := range p.Dirs {
			if d.Exist {
				fmt.Fprintf(w, "~ directory %s: %s\n", render.Escape(d.Dir.Path), strings.Join(d.Attrs, ", "))
			} else {
				fmt.Fprintf(w, "+ directory %s (mode %s)\n", render.Escape(d.Dir.Path), FormatMode(d.Dir.Mode))
			}
		}
		for i := range p.Changes {
			c := &p.Changes[i]
			switch {
			case c.displace != "":
				fmt.Fprintf(w, "* move aside %s: it is %s, not a regular file; it is renamed beside it, then the file written\n", render.Escape(c.Path), c.displace)
			case c.Action == Adopt && c.dropOld:
				fmt.Fprintf(w, "* adopt %s: ccm did not write it; it is larger than max_file_size, so it is replaced and not kept\n", render.Escape(c.Path))
			case c.Action == Adopt:
				fmt.Fprintf(w, "* adopt %s: ccm did not write it; its original is kept and put back when ccm stops managing it\n", render.Escape(c.Path))
			case c.Action == Restore:
				fmt.Fprintf(w, "* restore %s: the original from before ccm adopted it\n", render.Escape(c.Path))
			}
			fmt.Fprint(w, pal.diff(c.Diff()))
			if len(c.Attrs) > 0 {
				fmt.Fprintf(w, "~ %s: %s\n", render.Escape(c.Path), strings.Join(c.Attrs, ", "))
			}
		}
		if p.PendingOnChange && !p.Changed() {
			pending++
			fmt.Fprintln(w, "! on_change failed in an earlier run and will run again")
		}
		cr, ch, rm := p.Counts()
		create, change, remove = create+cr, change+ch, remove+rm
	}
	if create+change+remove+pending == 0 {
		fmt.Fprintf(w, "No changes: %d configurations up to date.\n", len(plans))
		return false
	}
	fmt.Fprintf(w, "Plan: %d to create, %d to change, %d to remove.", create, change, remove)
	if pending > 0 {
		fmt.Fprintf(w, " %d on_change to retry.", pending)
	}
	fmt.Fprintln(w)
	return true
}

// oneLine keeps a multi-line error on one plan line.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// Colorize colours the diff lines of a plan's text for a terminal when on
// is set.
func Colorize(text string, on bool) string { return palette{on: on}.diff(text) }
