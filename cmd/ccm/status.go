package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/render"
)

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the failure flag, the lock holder and every node's last run",
		Long:  "Exit codes: 0, or 3 when the failure flag is set.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v *cluster.View
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				v, err = c.View(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(v); err != nil {
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
	if f := v.Failure; f != nil {
		fmt.Fprintf(w, "Failure flag: SET by node %s, configuration %s, revision %d, at %s\n  %s\n",
			render.Escape(f.Node), render.Escape(f.Configuration), f.Revision, f.Time.Format(time.RFC3339), render.Escape(firstLine(f.Error)))
	} else {
		fmt.Fprintln(w, "Failure flag: clear")
	}
	holder := "free"
	if v.Holder != "" {
		holder = "held by " + render.Escape(v.Holder)
	}
	if len(v.Waiting) > 0 {
		holder += fmt.Sprintf("; waiting: %s", render.Escape(strings.Join(v.Waiting, ", ")))
	}
	fmt.Fprintf(w, "Lock: %s\n\n", holder)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tCONVERGED\tBEHIND\tLAST RUN\tWHEN\tDETAIL")
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
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", render.Escape(n.Name), n.State, n.Converged, behind, last, when, render.Escape(detail))
	}
	tw.Flush()
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i] + " ..."
		}
	}
	return s
}

func newResumeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "resume",
		Short: "Clear the failure flag so that the rollout continues",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var f *cluster.Failure
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				f, err = c.Resume(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if f == nil {
				fmt.Fprintln(a.stdout, "Failure flag was not set.")
				return nil
			}
			fmt.Fprintf(a.stdout, "Failure flag cleared (was set by node %s, configuration %s).\n", f.Node, f.Configuration)
			return nil
		},
	}
}
