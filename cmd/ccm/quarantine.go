package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/render"
)

func newQuarantineCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quarantine",
		Short: "List or clear the objects held back because they failed on their own",
		Long: `An object whose file fails to render, whose owner does not exist, that breaks
its schema, or whose file fails its check is quarantined: the node that found it
records it under <prefix>/quarantine/<node>/<type>/<id>, its files stay at their
last good version, every other object converges, and every node skips it at that
revision without trying it. A new revision of the object lifts the quarantine;
ccm quarantine clear makes the nodes try it again as it is.`,
	}
	cmd.AddCommand(newQuarantineListCmd(a), newQuarantineClearCmd(a))
	return cmd
}

// quarantineEntry is a record as ccm quarantine list shows it: with the
// object's revision now, which tells whether it still holds.
type quarantineEntry struct {
	api.Quarantine
	// Current is the object's revision now, 0 when it was deleted.
	Current int64 `json:"current_revision"`
	Holds   bool  `json:"holds"`
}

func newQuarantineListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the quarantine records, and whether each still holds its object back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var entries []quarantineEntry
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				qs, err := c.Quarantines(ctx)
				if err != nil {
					return err
				}
				entries, err = withRevisions(ctx, c, qs)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, entries, true)
			}
			printQuarantines(a.stdout, entries)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// withRevisions reads the current revision of every quarantined object.
func withRevisions(ctx context.Context, c *cluster.Cluster, qs []api.Quarantine) ([]quarantineEntry, error) {
	entries := []quarantineEntry{}
	for _, q := range qs {
		resp, err := c.Client().Get(ctx, c.ObjectKey(q.Type, q.ID), clientv3.WithKeysOnly())
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", c.ObjectKey(q.Type, q.ID), err)
		}
		e := quarantineEntry{Quarantine: q}
		if len(resp.Kvs) > 0 {
			e.Current = resp.Kvs[0].ModRevision
		}
		e.Holds = q.Holds(e.Current)
		entries = append(entries, e)
	}
	return entries, nil
}

func printQuarantines(w io.Writer, entries []quarantineEntry) {
	if len(entries) == 0 {
		fmt.Fprintln(w, "No object is quarantined.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OBJECT\tREVISION\tSTATE\tFOUND BY\tCONFIGURATION\tWHEN\tERROR")
	for _, e := range entries {
		state := "held"
		switch {
		case e.Current == 0:
			state = "lifted (object deleted)"
		case !e.Holds:
			state = fmt.Sprintf("lifted (object now at %d)", e.Current)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", render.Escape(e.Object()), e.Revision, state, render.Escape(e.Node),
			render.Escape(e.Configuration), e.Time.Format(time.RFC3339), render.Escape(firstLine(e.Error)))
	}
	tw.Flush()
}

func newQuarantineClearCmd(a *app) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "clear (TYPE/ID ... | --all)",
		Short: "Delete quarantine records, so that the nodes try the objects again as they are",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return fmt.Errorf("name the objects to clear as TYPE/ID, or pass --all")
			}
			for _, o := range args {
				typ, id, _ := strings.Cut(o, "/")
				if _, err := a.objectKey(typ, id); err != nil {
					return fmt.Errorf("%s: %w", o, err)
				}
			}
			cleared, err := read(a, cmd, func(c *cluster.Cluster, ctx context.Context) ([]api.Quarantine, error) {
				return c.ClearQuarantine(ctx, args)
			})
			if err != nil {
				return err
			}
			if len(cleared) == 0 {
				fmt.Fprintln(a.stdout, "Nothing to clear: no such quarantine record.")
			}
			for _, q := range cleared {
				fmt.Fprintf(a.stdout, "Quarantine of %s at revision %d cleared (found by node %s); the next run tries it again.\n",
					render.Escape(q.Object()), q.Revision, render.Escape(q.Node))
				a.record(cmd, "quarantine clear", fmt.Sprintf("%s at revision %d (found by node %s)", q.Object(), q.Revision, q.Node))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "clear every quarantine record")
	return cmd
}
