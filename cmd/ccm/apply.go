package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/applier"
	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/objects"
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
and, on failure, set the failure flag.
Exit codes: 0 converged, 1 failed (flag set), 3 halted by the flag.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !once {
				return errors.New("apply needs --once; the long-running service is ccm agent")
			}
			ctx := cmd.Context()
			if lockTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, lockTimeout)
				defer cancel()
			}
			return a.applyOnce(ctx, names, lockTTL)
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run once and exit")
	cmd.Flags().StringSliceVar(&names, "config", nil, "converge only this configuration (repeatable)")
	cmd.Flags().DurationVar(&lockTTL, "lock-ttl", cluster.DefaultLockTTL, "lease TTL of the lock session")
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 0, "give up waiting for the lock after this long (0: wait)")
	return cmd
}

func (a *app) applyOnce(ctx context.Context, names []string, lockTTL time.Duration) error {
	set, ap, selected, err := a.prepare(names)
	if err != nil {
		return err
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	labels, _ := a.nodeLabels()
	start := time.Now()
	lock, err := c.Acquire(ctx, lockTTL, labels)
	if err != nil {
		return err
	}
	defer func() {
		if err := lock.Release(); err != nil {
			a.log.Warn("release lock", zap.Error(err))
		}
	}()
	a.log.Info("lock acquired", zap.Duration("waited", time.Since(start)))
	runCtx, cancel := lock.Context(ctx)
	defer cancel()

	status := cluster.Status{Node: a.node, Time: time.Now().UTC()}
	if f, err := c.Failure(runCtx); err != nil {
		return err
	} else if f != nil {
		status.Result, status.Error = cluster.ResultHalted, fmt.Sprintf("failure flag set by %s (%s)", f.Node, f.Configuration)
		if err := lock.WriteStatus(ctx, status); err != nil {
			a.log.Warn("write status", zap.Error(err))
		}
		return fmt.Errorf("%w (set by node %s, configuration %s: %s)", errHalted, f.Node, f.Configuration, f.Error)
	}
	snap, err := objects.Load(runCtx, c.Client(), a.prefix)
	if err != nil {
		return err
	}
	a.warnIgnored(snap)
	report := ap.Run(runCtx, set, snap, selected)
	return a.finish(ctx, lock, report, status, start)
}

// finish writes the node's status and, after a failure, the failure flag,
// both fenced by lock ownership.
func (a *app) finish(ctx context.Context, lock *cluster.Lock, report *applier.Report, status cluster.Status, start time.Time) error {
	status.Revision, status.Outcomes = report.Revision, report.Outcomes
	status.Duration = time.Since(start).Round(time.Millisecond).String()
	status.Time = time.Now().UTC()
	switch {
	case report.Aborted:
		status.Result, status.Error = cluster.ResultAborted, abortCause(report)
	case report.Failed():
		status.Result, status.Error = cluster.ResultFailed, report.Err.Error()
	default:
		status.Result = cluster.ResultConverged
	}
	// Status and flag are written even during shutdown: ctx may be done.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	if err := lock.WriteStatus(wctx, status); err != nil {
		return errors.Join(report.Err, err)
	}
	if report.Failed() {
		config, msg := report.FirstFailure()
		f := cluster.Failure{Node: a.node, Configuration: config, Error: msg, Revision: report.Revision, Time: status.Time}
		if err := lock.SetFailure(wctx, f); err != nil {
			return errors.Join(report.Err, err)
		}
		return fmt.Errorf("%w; failure flag set", report.Err)
	}
	if report.Aborted {
		return fmt.Errorf("run aborted before every configuration ran: %s", status.Error)
	}
	a.log.Info("converged", zap.Int64("revision", report.Revision), zap.String("took", status.Duration))
	return nil
}

func abortCause(r *applier.Report) string {
	for _, o := range r.Outcomes {
		if o.Result == applier.Aborted {
			return o.Error
		}
	}
	return ""
}
