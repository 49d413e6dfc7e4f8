package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/rollout"
)

func newApplyCmd(a *app) *cobra.Command {
	var names []string
	var once bool
	var lockTTL, lockTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply --once",
		Short: "Converge this node once, under the cluster lock",
		Long: `Take the cluster lock, refuse while the failure flag is set, converge every
configuration (or --config NAME) in dependency order, write this node's status
and, on failure, set the failure flag. It does not touch the node's presence:
that belongs to the agent.
Exit codes: 0 converged, 1 failed (flag set), 3 halted by the flag.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !once {
				return errors.New("apply needs --once; the long-running service is ccm agent")
			}
			return a.applyOnce(cmd.Context(), names, lockTTL, lockTimeout)
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run once and exit")
	cmd.Flags().StringSliceVar(&names, "config", nil, "converge only this configuration (repeatable)")
	a.registerFlagCompletion(cmd, "config", configNames)
	cmd.Flags().DurationVar(&lockTTL, "lock-ttl", cluster.DefaultLockTTL, "lease TTL of the lock session")
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 0, "give up waiting for the lock after this long (0: wait); the run itself is not bounded")
	return cmd
}

func (a *app) applyOnce(ctx context.Context, names []string, lockTTL, lockTimeout time.Duration) error {
	set, ap, selected, err := a.prepare(names)
	if err != nil {
		return err
	}
	sch, err := a.schemas()
	if err != nil {
		return err
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return err
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
		Set: set, Names: selected, Full: true, LockTimeout: lockTimeout, Reason: "apply --once",
		Snapshot: func(ctx context.Context, _ int64) (*objects.Snapshot, error) {
			return objects.Load(ctx, c.Client(), a.prefix, sch)
		},
		Target: func() int64 { return newestObject(ctx, c) },
	})
	if res.Err == nil {
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
