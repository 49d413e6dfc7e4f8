package agent

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/applier"
	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/debounce"
)

// syncTimeout bounds the wait for the mirror to catch up with etcd after
// the lock is taken.
const syncTimeout = 5 * time.Second

// selectConfigs returns the configurations of set a batch runs on this
// node, in dependency order. The bus may briefly name configurations of a
// set being reloaded; only those of set are kept.
func (a *Agent) selectConfigs(set *configs.Set, b debounce.Batch) ([]string, error) {
	if b.All {
		return a.applier.Select(set, nil)
	}
	var names []string
	for _, n := range a.bus.Publish(b.Types...) {
		if _, ok := set.Get(n); ok {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	return a.applier.Select(set, names)
}

// converge runs one batch under the lock. A batch that cannot run (etcd
// unreachable, lock lost, flag set) is put back.
func (a *Agent) converge(ctx context.Context, b debounce.Batch) {
	// One set for the whole run, even if SIGHUP swaps it meanwhile.
	set := a.configs.Load()
	names, err := a.selectConfigs(set, b)
	if err != nil {
		a.log.Error("select configurations", zap.Error(err))
		return
	}
	if len(names) == 0 {
		a.log.Debug("no configuration subscribes to the change", zap.Strings("types", b.Types))
		return
	}
	if err := a.ensureSession(ctx); err != nil {
		a.postpone(ctx, b, "open session", err)
		return
	}
	start := a.opts.Clock.Now()
	lock, err := a.session.Lock(ctx)
	if err != nil {
		a.postpone(ctx, b, "wait for lock", err)
		return
	}
	defer func() {
		if err := lock.Release(); err != nil {
			a.log.Warn("release lock", zap.Error(err))
		}
	}()
	a.metrics.LockWait.Observe(a.opts.Clock.Since(start).Seconds())
	a.log.Info("lock acquired", zap.String("run", describe(b)), zap.Strings("configurations", names),
		zap.Duration("waited", a.opts.Clock.Since(start)))
	a.runLocked(ctx, lock, set, b, names)
}

// runLocked checks the flag, syncs the mirror and applies, holding lock.
func (a *Agent) runLocked(ctx context.Context, lock *cluster.Lock, set *configs.Set, b debounce.Batch, names []string) {
	start := a.opts.Clock.Now()
	status := cluster.Status{Node: a.opts.Node, Time: start.UTC()}
	f, rev, err := a.cluster.FailureAt(ctx)
	if err != nil {
		a.postpone(ctx, b, "read failure flag", err)
		return
	}
	if f != nil {
		a.halt(ctx, lock, b, f)
		return
	}
	// Render at least what etcd held when the lock was ours.
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	if err := a.watcher.SyncTo(syncCtx, rev); err != nil {
		a.log.Warn("mirror not confirmed up to date; rendering what it holds", zap.Error(err))
	}
	cancel()
	snap := a.mirror.Snapshot()
	for _, err := range snap.Ignored {
		a.log.Warn("ignored key", zap.Error(err))
	}
	runCtx, stop := lock.Context(ctx)
	run := a.applier.RunChanged
	if b.All { // start, resync, resume, reload, compaction: check everything
		run = a.applier.Run
	}
	report := run(runCtx, set, snap, names)
	lost := errors.Is(context.Cause(runCtx), cluster.ErrLockLost)
	stop()
	a.retry.Reset()
	a.record(ctx, lock, report, status, start)
	if report.Aborted {
		if lost {
			a.log.Warn("lock lost mid-run; starting again from scratch on a new session")
			a.dropSession()
		}
		a.deb.Requeue(debounce.Batch{All: true, Reasons: []string{"aborted run"}, Revision: b.Revision})
	}
}

// halt records that the flag stops this node and keeps the work for when
// it is cleared (everything converges then).
func (a *Agent) halt(ctx context.Context, lock *cluster.Lock, b debounce.Batch, f *cluster.Failure) {
	a.log.Warn("halted by the failure flag", zap.String("flag_node", f.Node), zap.String("configuration", f.Configuration))
	a.flag.observe(true)
	a.metrics.Runs.WithLabelValues(cluster.ResultHalted).Inc()
	a.deb.Requeue(b)
	status := cluster.Status{Node: a.opts.Node, Result: cluster.ResultHalted, Time: a.opts.Clock.Now().UTC(),
		Error: "failure flag set by " + f.Node + " (" + f.Configuration + ")"}
	if err := lock.WriteStatus(ctx, status); err != nil {
		a.log.Warn("write status", zap.Error(err))
	}
}

// record writes status (and the flag after a failure) fenced by the lock,
// and updates the metrics.
func (a *Agent) record(ctx context.Context, lock *cluster.Lock, r *applier.Report, status cluster.Status, start time.Time) {
	took := a.opts.Clock.Since(start)
	status.Revision, status.Outcomes = r.Revision, r.Outcomes
	status.Duration = took.Round(time.Millisecond).String()
	status.Time = a.opts.Clock.Now().UTC()
	switch {
	case r.Aborted:
		status.Result = cluster.ResultAborted
	case r.Failed():
		status.Result, status.Error = cluster.ResultFailed, r.Err.Error()
	default:
		status.Result = cluster.ResultConverged
		a.metrics.LastSuccess.Set(float64(status.Time.Unix()))
	}
	a.metrics.Runs.WithLabelValues(status.Result).Inc()
	a.metrics.RunDuration.Observe(took.Seconds())
	for _, o := range r.Outcomes {
		a.metrics.ChangedFiles.Add(float64(o.Created + o.Updated + o.Removed))
		if o.Result == applier.Failed {
			a.metrics.Failures.Inc()
		}
	}
	log := a.log.With(zap.String("result", status.Result), zap.Int64("revision", r.Revision), zap.Duration("took", took))
	if r.Failed() {
		log.Error("run failed", zap.Error(r.Err))
	} else {
		log.Info("run finished")
	}
	// Written even during shutdown: the configuration under way finished.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := lock.WriteStatus(wctx, status); err != nil {
		a.log.Warn("write status", zap.Error(err))
	}
	if !r.Failed() {
		return
	}
	config, msg := r.FirstFailure()
	f := cluster.Failure{Node: a.opts.Node, Configuration: config, Error: msg, Revision: r.Revision, Time: status.Time}
	if err := lock.SetFailure(wctx, f); err != nil {
		a.log.Error("could not set the failure flag", zap.Error(err))
		return
	}
	a.flag.observe(true)
}

// postpone puts a batch back after an attempt that could not run, and
// waits before the next attempt.
func (a *Agent) postpone(ctx context.Context, b debounce.Batch, what string, err error) {
	a.deb.Requeue(b)
	if ctx.Err() != nil {
		return
	}
	a.log.Warn(what+" failed; will retry", zap.Error(err), zap.Duration("in", a.retry.Next()))
	if a.session != nil && a.session.Lost() {
		a.dropSession()
	}
	a.retry.Wait(ctx)
}

// ensureSession opens a session (lease, presence) if there is none alive.
func (a *Agent) ensureSession(ctx context.Context) error {
	if a.session != nil && !a.session.Lost() {
		return nil
	}
	a.dropSession()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := a.cluster.NewSession(sctx, a.opts.LockTTL, a.opts.Labels)
	if err != nil {
		return err
	}
	a.session = s
	return nil
}

func (a *Agent) dropSession() {
	if a.session != nil {
		a.session.Close()
		a.session = nil
	}
}
