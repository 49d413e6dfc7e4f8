package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/cluster"
)

func newRBACCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "rbac", Short: "etcd access control for nodes"}
	cmd.AddCommand(&cobra.Command{
		Use:   "print",
		Short: "Print the etcdctl commands that create a node's least-privilege role and user",
		Long: `Print the etcdctl commands that create the role and user of --node: read-only
on <prefix>/objects/, read-write on <prefix>/lock/, <prefix>/failure and
<prefix>/nodes/<node>/. Run them with root credentials; the user's password is
taken from $CCM_NODE_PASSWORD. The node then runs with --user ccm-node-<node>
and CCM_PASSWORD.`,
		Args: cobra.NoArgs,
		// Needs no etcd: it only prints.
		RunE: func(*cobra.Command, []string) error {
			role := cluster.NodeRole(a.prefix, a.node)
			fmt.Fprintf(a.stdout, "# etcd role and user for ccm node %s (run with root credentials)\n", a.node)
			fmt.Fprintln(a.stdout, strings.Join(role.EtcdctlCommands("CCM_NODE_PASSWORD"), "\n"))
			return nil
		},
	})
	return cmd
}
