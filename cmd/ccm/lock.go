package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/render"
)

func newLockCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "lock", Short: "The cluster lock: evict a node that holds it or waits for it"}
	var yes bool
	breakCmd := &cobra.Command{
		Use:   "break NODE",
		Short: "Evict NODE from the lock queue: delete its lock keys and revoke their leases",
		Long: `Show how NODE holds the lock (or waits for it) and for how long, then, once
confirmed (at a terminal, or with --yes), delete its lock keys and revoke
the leases they are on. The node's agent finds its session lost: a run
under way stops before its next rename or command and reports aborted, and
the agent queues again on a new session. Use it for a holder that is stuck
or gone while something keeps its lease alive; a node that is merely slow
only starts over.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				keys, err := c.Queued(ctx, node)
				if err != nil {
					return err
				}
				if len(keys) == 0 {
					return fmt.Errorf("node %s neither holds nor waits for the lock", render.Escape(node))
				}
				for _, q := range keys {
					fmt.Fprintln(a.stdout, describeQueued(q, time.Now()))
				}
				if !yes {
					if err := a.confirm(fmt.Sprintf("Evict node %s from the lock? [y/N] ", render.Escape(node))); err != nil {
						return err
					}
				}
				n, err := c.BreakLock(ctx, keys)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "Broke %d lock key(s) of node %s.\n", n, render.Escape(node))
				a.record(cmd, "lock break", fmt.Sprintf("node %s: %d lock key(s)", node, n))
				return nil
			})
		},
	}
	breakCmd.ValidArgsFunction = a.completion(argLister(nodeNames))
	breakCmd.Flags().BoolVar(&yes, "yes", false, "break without asking")
	cmd.AddCommand(breakCmd)
	return cmd
}

// describeQueued is one line of ccm lock break: whose key, held since
// when or waiting, and on which lease.
func describeQueued(q cluster.Queued, now time.Time) string {
	state := "waits for the lock"
	switch {
	case q.Held && !q.Since.IsZero():
		state = fmt.Sprintf("holds the lock since %s (for %s)", q.Since.Format(time.RFC3339), now.Sub(q.Since).Round(time.Second))
	case q.Held:
		state = "holds the lock"
	}
	legacy := ""
	if q.Legacy {
		legacy = ", a key of an agent before per-node lock keys"
	}
	return fmt.Sprintf("Node %s %s: key %s, lease %s%s", render.Escape(q.Node), state, render.Escape(q.Key), q.Lease, legacy)
}

// confirm asks question at a terminal and fails unless the answer is yes;
// without a terminal it fails, so that a script must say --yes.
func (a *app) confirm(question string) error {
	in, ok := a.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return fmt.Errorf("%w (no terminal to ask at: pass --yes)", errNotConfirmed)
	}
	fmt.Fprint(a.stderr, question)
	answer, _ := bufio.NewReader(in).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
		return errNotConfirmed
	}
	return nil
}
