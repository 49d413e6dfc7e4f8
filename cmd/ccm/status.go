package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/render"
)

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the failure flag, the lock holder and every node's last run",
		Long:  "Exit codes: 0, or 3 when the failure flag is set.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := read(a, cmd, (*cluster.Cluster).View)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(a.stdout, v, true); err != nil {
					return err
				}
			} else {
				printView(a.stdout, v)
			}
			if v.Failure != nil {
				return errHalted
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printView(w io.Writer, v *cluster.View) {
	if len(v.Failures) == 0 {
		fmt.Fprintln(w, "Failure flag: clear")
	}
	for _, f := range v.Failures {
		fmt.Fprintf(w, "Failure flag: SET by %s, configuration %s, revision %d, at %s\n  %s\n",
			failedBy(f), render.Escape(f.Configuration), f.Revision, f.Time.Format(time.RFC3339), render.Escape(firstLine(f.Error)))
	}
	if p := v.Pause; p != nil {
		fmt.Fprintf(w, "Paused: by %s at %s: %s\n", render.Escape(p.By), p.Time.Format(time.RFC3339), render.Escape(firstLine(p.Reason)))
	}
	if r := v.Release; r != nil {
		fmt.Fprintf(w, "Release: %s, promoted by %s at %s\n", releases.Short(r.ID), render.Escape(r.By), r.Time.Format(time.RFC3339))
	} else {
		fmt.Fprintln(w, "Release: none promoted; agents read their --config-dir")
	}
	fmt.Fprintf(w, "Rollout: %s\n", v.Rollout)
	if v.Rollout.Canary && v.Rollout.Slots() > 1 {
		if c := v.Canary; c != nil {
			fmt.Fprintf(w, "Canary: node %s converged revision %d; later changes run on one canary first\n", render.Escape(c.Node), c.Revision)
		} else {
			fmt.Fprintln(w, "Canary: no canary converged a change yet; the next change runs on one canary first")
		}
	}
	holder := "free"
	since := map[string]time.Time{}
	for _, q := range v.Queue {
		if q.Held {
			since[q.Node] = q.Since
		}
	}
	var holders []string
	for _, h := range v.Holders {
		if t := since[h]; !t.IsZero() {
			h += fmt.Sprintf(" (for %s)", time.Since(t).Round(time.Second))
		}
		holders = append(holders, h)
	}
	if len(holders) > 0 {
		holder = "held by " + render.Escape(strings.Join(holders, ", "))
	}
	if len(v.Waiting) > 0 {
		holder += fmt.Sprintf("; waiting: %s", render.Escape(strings.Join(v.Waiting, ", ")))
	}
	fmt.Fprintf(w, "Lock: %s\n", holder)
	for _, nodes := range v.SharedActionKeys {
		fmt.Fprintf(w, "Action key: nodes %s publish the same key (cloned from one image?): each opens the secrets sealed to the others; delete <state-dir>/keys/action.key on each and restart it\n",
			render.Escape(strings.Join(nodes, ", ")))
	}
	if v.Partial != "" {
		fmt.Fprintf(w, "Partial view: %s\n", render.Escape(v.Partial))
	}
	fmt.Fprintf(w, "Nodes: %s\n\n", v.Summary)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tRELEASE\tCONVERGED\tBEHIND\tLAST RUN\tWHEN\tDETAIL")
	for _, n := range v.Nodes {
		behind := "no"
		if n.Behind {
			behind = "yes"
		}
		last, when, detail := "-", "-", ""
		if s := n.Status; s != nil {
			last, when = s.Result, s.Time.Format(time.RFC3339)
			detail = firstLine(s.Error)
		}
		if p := n.Problem; p != nil { // why an alive agent makes no progress
			detail = "agent: " + firstLine(p.Error) + " (since " + p.Since.Format(time.RFC3339) + ")"
		}
		if n.ReloadError != "" {
			detail = "reload failed: " + firstLine(n.ReloadError)
		} else if n.ReleaseStoredError != "" {
			detail = "stored release broken, running the staged copy: " + firstLine(n.ReleaseStoredError)
		}
		if detail == "" {
			detail = n.Drift
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", render.Escape(n.Name), n.State, releaseName(n.Release), n.Converged, behind, last, when, render.Escape(detail))
	}
	tw.Flush()
	if len(v.Quarantines) > 0 {
		fmt.Fprintf(w, "\nQuarantined objects (%d records; held back at that revision on every node; ccm quarantine list tells which still hold):\n", len(v.Quarantines))
		for _, q := range v.Quarantines {
			fmt.Fprintf(w, "  %s at revision %d, found by node %s in configuration %s: %s\n", render.Escape(q.Object()), q.Revision,
				render.Escape(q.Node), render.Escape(q.Configuration), render.Escape(firstLine(q.Error)))
		}
	}
}

// releaseName is how status shows a node's release: its short id, or
// "dir" for --config-dir.
func releaseName(id string) string {
	if id == "" {
		return "dir"
	}
	return render.Escape(releases.Short(id))
}

// failedBy names who raised a failure record, escaped for a terminal.
func failedBy(f api.Failure) string { return render.Escape(f.By()) }

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i] + " ..."
		}
	}
	return s
}

func newResumeCmd(a *app) *cobra.Command {
	var pause bool
	cmd := &cobra.Command{
		Use:   "resume [--pause]",
		Short: "Clear the failure flag so that the rollout continues; --pause lifts a pause instead",
		Long: `Clear the failure flag, and only it: a pause (ccm pause) is someone's
maintenance window, and ccm resume --pause (or ccm unpause) lifts it, saying
whose pause it was.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pause {
				return a.unpause(cmd)
			}
			cleared, err := read(a, cmd, (*cluster.Cluster).Resume)
			if err != nil {
				return err
			}
			if len(cleared) == 0 {
				fmt.Fprintln(a.stdout, "Nothing to resume: the failure flag was not set.")
			}
			for _, f := range cleared {
				fmt.Fprintf(a.stdout, "Failure flag cleared (was set by %s, configuration %s).\n", failedBy(f), render.Escape(f.Configuration))
				a.record(cmd, "resume", fmt.Sprintf("cleared the failure record of %s (configuration %s)", f.By(), f.Configuration))
			}
			return a.mentionPause(cmd)
		},
	}
	cmd.Flags().BoolVar(&pause, "pause", false, "lift the pause (ccm pause) instead of the failure flag")
	return cmd
}

func newUnpauseCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "unpause",
		Short: "Lift the pause (ccm pause), saying whose it was; the same as ccm resume --pause",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.unpause(cmd) },
	}
}

// unpause lifts the pause and says whose it was.
func (a *app) unpause(cmd *cobra.Command) error {
	p, err := read(a, cmd, (*cluster.Cluster).Unpause)
	if err != nil {
		return err
	}
	if p == nil {
		fmt.Fprintln(a.stdout, "Nothing to lift: the rollout was not paused.")
		return nil
	}
	fmt.Fprintf(a.stdout, "Pause lifted: it was %s's, since %s (%s).\n", render.Escape(p.By), p.Time.Format(time.RFC3339), render.Escape(p.Reason))
	a.record(cmd, "unpause", fmt.Sprintf("lifted %s's pause (%s)", p.By, p.Reason))
	return nil
}

// mentionPause tells, after the flag was cleared, that a pause still holds
// the rollout, and whose it is.
func (a *app) mentionPause(cmd *cobra.Command) error {
	g, err := read(a, cmd, (*cluster.Cluster).Pause)
	if err == nil && g != nil {
		fmt.Fprintf(a.stdout, "The rollout stays paused by %s since %s (%s); ccm resume --pause lifts it.\n", render.Escape(g.By), g.Time.Format(time.RFC3339), render.Escape(g.Reason))
	}
	return err
}

// read calls fn on the cluster with a request timeout and returns what it
// read.
func read[T any](a *app, cmd *cobra.Command, fn func(*cluster.Cluster, context.Context) (T, error)) (T, error) {
	var v T
	err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
		v, err = fn(c, ctx)
		return err
	})
	return v, err
}

func newPauseCmd(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "Pause the rollout: agents apply nothing and keep collecting changes",
		Long: `Write <prefix>/paused. Agents finish the run under way, then apply nothing
and report paused; no failure is implied. ccm resume lifts it, and every
agent converges in turn.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := api.Pause{By: a.by(), Reason: reason, Time: time.Now().UTC()}
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error { return c.SetPause(ctx, p) })
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "Rollout paused; ccm resume --pause (or ccm unpause) continues it.")
			a.record(cmd, "pause", reason)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for ccm status")
	return cmd
}

func newRolloutCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Set how many nodes converge at once"}
	var batch int
	var canary bool
	set := &cobra.Command{
		Use:   "set",
		Short: "Set the rollout strategy: --batch N nodes at once, after a --canary",
		Long: `Write <prefix>/rollout; agents follow it at once. --batch N lets N nodes
converge at once (N slots of the cluster lock); 1 is the serial rollout.
--canary makes the first node to converge a change do so alone: the others
start once it reported converged for it, then N at a time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := api.Rollout{Batch: batch, Canary: canary}
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error { return c.SetRollout(ctx, r) })
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Rollout: %s.\n", r)
			return nil
		},
	}
	set.Flags().IntVar(&batch, "batch", 1, "nodes that converge at once")
	set.Flags().BoolVar(&canary, "canary", false, "each change first on one node alone")
	cmd.AddCommand(set)
	return cmd
}
