package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
)

func newRBACCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "rbac", Short: "etcd access control for nodes and callers"}
	var caller, apiName, operator, viewer, release string
	printCmd := &cobra.Command{
		Use:   "print",
		Short: "Print the etcdctl commands that create the least-privilege role and user of a node, an API, an operator or a viewer",
		Long: `Print the etcdctl commands that create a role and a user of the same name.
By default, those of --node: read on <prefix>/objects/,
<prefix>/actions/<node>/, <prefix>/lock/, <prefix>/failure (every failure
record), <prefix>/canary/, <prefix>/paused and <prefix>/rollout; read-write
only on the node's own records: <prefix>/lock/<node>/,
<prefix>/failure/<node>, <prefix>/canary/<node> and <prefix>/nodes/<node>/
(status, presence, problem, replies). It reads <prefix>/releases/ and
<prefix>/release, and writes neither.
--api NAME: a cluster API: read-write on objects and action requests, read
on what ccm status reads and on <prefix>/releases/ (ccm object put checks
objects against the promoted release's schemas).
--operator NAME: everything an operator's commands need: read-write on
<prefix>/.
--viewer NAME: ccm status and the dashboard: read on <prefix>/ but
<prefix>/releases/ (object data and action replies included), as two
ranges.
--caller NAME: a caller of actions only: read-write on <prefix>/actions/,
read on <prefix>/nodes/.
--release NAME: whoever pushes configuration releases (ccm release push):
read-write on <prefix>/releases/ only. Promoting one (ccm release promote,
rollback) is an operator's.
Run them with root credentials; the user's password is taken from
$CCM_NODE_PASSWORD (or $CCM_<KIND>_PASSWORD, such as $CCM_API_PASSWORD).
The node then runs with --user ccm-node-<node> and CCM_PASSWORD.`,
		Args: cobra.NoArgs,
		// Needs no etcd: it only prints.
		RunE: func(*cobra.Command, []string) error {
			role, what, passwordVar := cluster.NodeRole(a.prefix, a.node), "ccm node "+a.node, "CCM_NODE_PASSWORD"
			if caller+apiName+operator+viewer+release == "" {
				if err := a.checkNode(); err != nil {
					return err
				}
			}
			for _, r := range []struct {
				name, kind string
				role       func(prefix, name string) cluster.Role
			}{
				{caller, "caller", cluster.CallerRole}, {apiName, "api", cluster.APIRole},
				{operator, "operator", cluster.OperatorRole}, {viewer, "viewer", cluster.ViewerRole},
				{release, "release", cluster.ReleaseRole},
			} {
				if r.name == "" {
					continue
				}
				if err := api.CheckName("--"+r.kind, r.name); err != nil {
					return err
				}
				role, what, passwordVar = r.role(a.prefix, r.name), "ccm "+r.kind+" "+r.name, "CCM_"+strings.ToUpper(r.kind)+"_PASSWORD"
			}
			fmt.Fprintf(a.stdout, "# etcd role and user for %s (run with root credentials)\n", what)
			fmt.Fprintln(a.stdout, strings.Join(role.EtcdctlCommands(passwordVar), "\n"))
			return nil
		},
	}
	printCmd.Flags().StringVar(&caller, "caller", "", "print the role of the caller of actions `NAME` instead of --node's")
	printCmd.Flags().StringVar(&apiName, "api", "", "print the role of the cluster API `NAME`: objects, action calls, status")
	printCmd.Flags().StringVar(&operator, "operator", "", "print the role of the operator `NAME`: everything ccm's commands need")
	printCmd.Flags().StringVar(&viewer, "viewer", "", "print the read-only role `NAME` of ccm status and the dashboard")
	printCmd.Flags().StringVar(&release, "release", "", "print the role `NAME` of whoever pushes configuration releases")
	printCmd.MarkFlagsMutuallyExclusive("caller", "api", "operator", "viewer", "release")
	cmd.AddCommand(printCmd)
	return cmd
}
