package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/applier"
	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/render"
)

func newPlanCmd(a *app) *cobra.Command {
	var names []string
	var objectsFile, color string
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show, as unified diffs, what apply would change on this node",
		Long: `Render every configuration (or --config NAME) and print unified diffs of the
files that would be created, changed or removed, then a summary.
Exit codes: 0 no changes, 2 changes, 1 error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if objectsFile == "" && len(a.labels) == 0 {
				if err := a.publishedLabels(cmd.Context()); err != nil {
					return err
				}
			}
			set, ap, selected, err := a.prepare(names)
			if err != nil {
				return err
			}
			snap, err := a.snapshot(cmd.Context(), objectsFile)
			if err != nil {
				return err
			}
			plans, planErr := ap.PlanAll(set, snap, selected)
			changed := printPlans(a.stdout, plans, useColor(color, a.stdout))
			if planErr != nil {
				return planErr
			}
			if changed {
				return errChanges
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&names, "config", nil, "plan only this configuration (repeatable)")
	cmd.Flags().StringVar(&objectsFile, "objects", "", "plan offline from `FILE.json` shaped {\"<type>\": {\"<id>\": {...}}}")
	cmd.Flags().StringVar(&color, "color", "auto", "colour diffs: auto, always or never")
	return cmd
}

// publishedLabels takes the labels the node's agent announced, so that a
// plan without --label sees what the agent would converge; it says which
// it used on stderr.
func (a *app) publishedLabels(ctx context.Context) error {
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := a.requestContext(ctx)
	defer cancel()
	p, err := c.Presence(ctx, a.node)
	if err != nil {
		return err
	}
	if p == nil {
		fmt.Fprintf(a.stderr, "ccm: no --label given and no agent alive for node %s: planning with no labels\n", render.Escape(a.node))
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		a.labels = append(a.labels, k+"="+p.Labels[k])
	}
	used := strings.Join(a.labels, ",")
	if used == "" {
		used = "(none)"
	}
	fmt.Fprintf(a.stderr, "ccm: using the labels node %s's agent published: %s\n", render.Escape(a.node), render.Escape(used))
	return nil
}

// snapshot reads the objects from a file, or from etcd at one revision.
func (a *app) snapshot(ctx context.Context, file string) (*objects.Snapshot, error) {
	if file != "" {
		return objects.ReadFile(file)
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.requestContext(ctx)
	defer cancel()
	snap, err := objects.Load(ctx, c.Client(), a.prefix)
	if err != nil {
		return nil, err
	}
	a.warnIgnored(snap)
	return snap, nil
}

func (a *app) warnIgnored(snap *objects.Snapshot) {
	for _, err := range snap.Ignored {
		a.log.Warn("ignored key", zap.Error(err))
	}
}

func useColor(mode string, w io.Writer) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	return isTerminal(w)
}

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

// printPlans prints every plan and the summary, and reports whether
// anything would change.
func printPlans(w io.Writer, plans []*applier.Plan, color bool) bool {
	pal := palette{on: color}
	var create, change, remove, pending int
	for _, p := range plans {
		if !p.Changed() && !p.PendingOnChange {
			continue
		}
		title := "# configuration " + p.Config.Name
		if p.Orphan {
			title += " (no longer run on this node: its files are removed)"
		}
		fmt.Fprintln(w, pal.paint("1", title))
		for _, d := range p.Dirs {
			if d.Exist {
				fmt.Fprintf(w, "~ directory %s: %s\n", render.Escape(d.Dir.Path), strings.Join(d.Attrs, ", "))
			} else {
				fmt.Fprintf(w, "+ directory %s (mode %s)\n", render.Escape(d.Dir.Path), applier.FormatMode(d.Dir.Mode))
			}
		}
		for i := range p.Changes {
			c := &p.Changes[i]
			switch c.Action {
			case applier.Adopt:
				fmt.Fprintf(w, "* adopt %s: ccm did not write it; its original is kept and put back when ccm stops managing it\n", render.Escape(c.Path))
			case applier.Restore:
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
