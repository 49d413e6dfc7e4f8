package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
	"github.com/ccm-dev/ccm/internal/schemas"
)

func newApplyCmd(a *app) *cobra.Command {
	var names []string
	var once, yes bool
	var lockTTL, lockTimeout time.Duration
	var releaseKeys string
	cmd := &cobra.Command{
		Use:   "apply --once",
		Short: "Converge this node once, under the cluster lock",
		Long: `Take the cluster lock, refuse while the failure flag is set, converge every
configuration (or --config NAME) in dependency order, write this node's status
and, on failure, set the failure flag. It does not touch the node's presence:
that belongs to the agent.
It converges the machine it runs on, so it needs the node named (--node or
CCM_NODE, which /etc/default/ccm sets on a node), and it refuses, unless
--yes, a node whose live agent runs on another host, or a node never seen in
the cluster with --root /. On a terminal it shows the plan's summary and asks
first. Once a release is promoted, it runs that release, not --config-dir.
Exit codes: 0 converged, 1 failed (flag set) or refused, 3 halted by the flag.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !once {
				return errors.New("apply needs --once; the long-running service is ccm agent")
			}
			return a.applyOnce(cmd.Context(), names, lockTTL, lockTimeout, yes, releaseKeys)
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run once and exit")
	cmd.Flags().BoolVar(&yes, "yes", false, "converge without asking, even a node whose agent runs elsewhere or that was never seen")
	cmd.Flags().StringSliceVar(&names, "config", nil, "converge only this configuration (repeatable)")
	a.registerFlagCompletion(cmd, "config", configNames)
	cmd.Flags().DurationVar(&lockTTL, "lock-ttl", cluster.DefaultLockTTL, "lease TTL of the lock session")
	releaseKeysFlag(cmd, &releaseKeys)
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 0, "give up waiting for the lock after this long (0: wait); the run itself is not bounded")
	return cmd
}

func (a *app) applyOnce(ctx context.Context, names []string, lockTTL, lockTimeout time.Duration, yes bool, releaseKeys string) error {
	if err := a.checkNode(); err != nil {
		return err
	}
	if !a.explicitNode {
		return fmt.Errorf("apply --once converges this machine as a node: name it with --node or CCM_NODE (set in /etc/default/ccm on a node); the hostname %q is not taken for one", a.node)
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	release, promoted, cleanup, err := a.promotedRelease(ctx, c, releaseKeys)
	if err != nil {
		return err
	}
	defer cleanup()
	set, ap, selected, err := a.prepare(names)
	if err != nil {
		return err
	}
	sch, err := a.schemas()
	if err != nil {
		return err
	}
	if !yes {
		if err := a.mayApply(ctx, c); err != nil {
			return err
		}
		if err := a.confirmApply(ctx, c, set, ap, selected, sch); err != nil {
			return err
		}
	}
	sctx, cancel := a.requestContext(ctx)
	s, err := c.NewSession(sctx, cluster.SessionOptions{TTL: lockTTL})
	cancel()
	if err != nil {
		return err
	}
	defer s.Close()
	runner := rollout.New(rollout.Options{Cluster: c, Applier: ap, Node: a.node, Logger: a.log})
	res := runner.Run(ctx, s, rollout.Request{
		Set: set, Names: selected, Kind: runkind.Full, LockTimeout: lockTimeout, Reason: "apply --once",
		Snapshot: func(ctx context.Context, _ int64) (*objects.Snapshot, error) {
			return objects.Load(ctx, c.Client(), a.prefix, sch)
		},
		Target:  func() int64 { return max(newestObject(ctx, c), promoted) },
		Release: release,
	})
	// A one-shot run does once what the agent's loop would do next
	// (rollout.Settle): it says so, and leaves the next run to the operator.
	st := rollout.Settle(res)
	switch {
	case st.Again == rollout.Everything && res.Err == nil:
		return errors.New("the run was aborted; run ccm apply --once again")
	case st.Again == rollout.Everything:
		return fmt.Errorf("%w; the files are as the run left them: run ccm apply --once again once etcd answers", res.Err)
	case st.Again == rollout.Nothing && !st.Exit && res.Err == nil:
		a.log.Info("converged", zap.Int64("revision", res.Status.Revision), zap.String("took", res.Status.Duration))
	}
	return res.Err
}

// newestObject is the revision of the newest object write: the change a
// one-shot run converges, for a canary strategy (0 if unknown).
func newestObject(ctx context.Context, c *cluster.Cluster) int64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.Client().Get(ctx, c.ObjectsPrefix(), clientv3.WithLastRev()...)
	if err != nil || len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// errNotConfirmed is returned when the operator did not say yes.
var errNotConfirmed = errors.New("not confirmed: nothing was done")

// mayApply refuses to converge a node whose live agent runs on another
// host (two machines would be one node), or a node the cluster has never
// seen when the root is the machine's own /.
func (a *app) mayApply(ctx context.Context, c *cluster.Cluster) error {
	rctx, cancel := a.requestContext(ctx)
	defer cancel()
	p, err := c.Presence(rctx, a.node)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	switch {
	case p != nil && p.Host != host:
		elsewhere := "another host"
		if p.Host != "" {
			elsewhere = "host " + p.Host
		}
		return fmt.Errorf("node %s has a live agent on %s (since %s), and this is %s: converging it here too would make two machines one node; --yes to do it anyway",
			a.node, render.Escape(elsewhere), p.Since.Format(time.RFC3339), host)
	case p != nil:
		return nil
	}
	s, err := c.Status(rctx, a.node)
	if err != nil {
		return err
	}
	if s == nil && a.root == "/" {
		return fmt.Errorf("node %s was never seen in this cluster, and --root is /: this would converge this machine's own files as a new node; --yes if that is what you mean", a.node)
	}
	return nil
}

// confirmApply shows the plan's summary and asks, when a person is at a
// terminal.
func (a *app) confirmApply(ctx context.Context, c *cluster.Cluster, set *configs.Set, ap *applier.Applier, selected []string, sch *schemas.Set) error {
	in, ok := a.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return nil
	}
	rctx, cancel := a.requestContext(ctx)
	snap, err := objects.Load(rctx, c.Client(), a.prefix, sch)
	cancel()
	if err != nil {
		return err
	}
	plans, err := ap.PlanAll(set, snap, selected)
	if err != nil {
		return err
	}
	var out strings.Builder
	applier.WritePlans(&out, plans, false)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return a.confirm(fmt.Sprintf("Node %s, root %s: %s\nConverge it now? [y/N] ", render.Escape(a.node), a.root, lines[len(lines)-1]))
}
