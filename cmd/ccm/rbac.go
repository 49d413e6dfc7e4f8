package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/cluster"
)

func newRBACCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "rbac", Short: "etcd access control for nodes and callers"}
	var caller string
	printCmd := &cobra.Command{
		Use:   "print",
		Short: "Print the etcdctl commands that create a node's or a caller's least-privilege role and user",
		Long: `Print the etcdctl commands that create the role and user of --node: read on
<prefix>/objects/, <prefix>/actions/<node>/, <prefix>/paused and
<prefix>/rollout; read-write on <prefix>/lock/, <prefix>/failure,
<prefix>/canary and <prefix>/nodes/<node>/ (status, presence, replies).
With --caller NAME, those of a caller of actions such as the cluster API:
read-write on <prefix>/actions/ (requests), read on <prefix>/nodes/ (replies
and presence).
Run them with root credentials; the user's password is taken from
$CCM_NODE_PASSWORD (or $CCM_CALLER_PASSWORD). The node then runs with
--user ccm-node-<node> and CCM_PASSWORD.`,
		Args: cobra.NoArgs,
		// Needs no etcd: it only prints.
		RunE: func(*cobra.Command, []string) error {
			role, what, passwordVar := cluster.NodeRole(a.prefix, a.node), "ccm node "+a.node, "CCM_NODE_PASSWORD"
			if caller != "" {
				role, what, passwordVar = cluster.CallerRole(a.prefix, caller), "ccm caller "+caller, "CCM_CALLER_PASSWORD"
			}
			fmt.Fprintf(a.stdout, "# etcd role and user for %s (run with root credentials)\n", what)
			fmt.Fprintln(a.stdout, strings.Join(role.EtcdctlCommands(passwordVar), "\n"))
			return nil
		},
	}
	printCmd.Flags().StringVar(&caller, "caller", "", "print the role of the caller `NAME` (the cluster API) instead of --node's")
	cmd.AddCommand(printCmd)
	return cmd
}
