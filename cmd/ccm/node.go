package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/render"
)

func newNodeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "What operators say about nodes: the labels calls are addressed by"}
	label := &cobra.Command{
		Use:   "label NODE [KEY=VALUE|KEY-]...",
		Short: "Show or change the labels of NODE that ccm action run --label matches",
		Long: `Set (KEY=VALUE) or remove (KEY-) labels of NODE, then print them. With no
change, print them. These labels live in <prefix>/labels/NODE, which a node
may read and never write: a call by label reaches only the nodes an
operator labelled, never one that claims a label with its own --label
(which still serves when: in configurations).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			if err := api.CheckName("node", node); err != nil {
				return err
			}
			set, remove, changes := map[string]string{}, []string(nil), []string(nil)
			for _, arg := range args[1:] {
				if k, ok := strings.CutSuffix(arg, "-"); ok && !strings.Contains(arg, "=") {
					remove = append(remove, k)
				} else {
					changes = append(changes, arg)
				}
			}
			if err := pairs("label", changes, set); err != nil {
				return err
			}
			return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				var labels map[string]string
				var err error
				if len(set)+len(remove) > 0 {
					labels, err = c.SetLabels(ctx, node, set, remove)
					if err == nil {
						a.record(cmd, "node label", fmt.Sprintf("node %s: %s", node, strings.Join(args[1:], " ")))
					}
				} else {
					var all map[string]map[string]string
					all, err = c.Labels(ctx)
					labels = all[node]
				}
				if err != nil {
					return err
				}
				for _, k := range slices.Sorted(maps.Keys(labels)) {
					fmt.Fprintf(a.stdout, "%s=%s\n", render.Escape(k), render.Escape(labels[k]))
				}
				return nil
			})
		},
	}
	label.ValidArgsFunction = a.completion(nodeNames)
	cmd.AddCommand(label, newNodeRetireCmd(a))
	return cmd
}

func newNodeRetireCmd(a *app) *cobra.Command {
	retire := &cobra.Command{
		Use:   "retire NODE",
		Short: "Forget a node that is gone for good: its status, presence, problem, failure, canary and quarantine records and its labels",
		Long: `Delete, in one transaction, the records of NODE that ccm status and the
dashboard show: <prefix>/nodes/NODE/status, alive and problem,
<prefix>/failure/NODE (which lowers the failure flag if only NODE raised
it), <prefix>/canary/NODE, every <prefix>/quarantine/NODE/ record and
<prefix>/labels/NODE; then print each. It refuses while an agent is alive
for NODE (its presence is on a lease): stop the agent first. Its replies to
actions stay, for their callers.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			if err := api.CheckName("node", node); err != nil {
				return err
			}
			return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				gone, err := c.Retire(ctx, node)
				if err != nil {
					return err
				}
				if len(gone) == 0 {
					fmt.Fprintf(a.stdout, "Node %s had no records; nothing deleted.\n", render.Escape(node))
					return nil
				}
				for _, r := range gone {
					fmt.Fprintf(a.stdout, "deleted %s\n", render.Escape(r.Key))
				}
				fmt.Fprintf(a.stdout, "Node %s retired (%d records).\n", render.Escape(node), len(gone))
				a.record(cmd, "node retire", fmt.Sprintf("node %s: %d records", node, len(gone)))
				return nil
			})
		},
	}
	retire.ValidArgsFunction = a.completion(nodeNames)
	return retire
}
