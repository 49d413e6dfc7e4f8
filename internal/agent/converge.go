package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/debounce"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// names returns the configurations of sel a batch runs on this node, in
// dependency order.
func (a *Agent) names(sel *selection, b debounce.Batch) ([]string, error) {
	if b.Kind == runkind.Full {
		return a.applier.SelectAll(sel.set), nil
	}
	return a.applier.Select(sel.set, sel.subs.Subscribers(b.Types...))
}

// converge runs one batch under the lock. A batch that cannot run (etcd
// unreachable, lock lost, flag set) is put back. The error is one the
// agent must stop for: another live agent serves this node.
func (a *Agent) converge(ctx context.Context, b debounce.Batch) error {
	// One selection for the whole run, even if SIGHUP swaps it meanwhile.
	t, err := a.prepare(ctx, &b)
	switch {
	case errors.Is(err, errNoConfiguration):
		a.log.Info("no run", zap.Error(err))
		return nil
	case err != nil:
		a.postpone(ctx, b, "read the promoted release", err)
		return nil
	}
	names, err := a.names(t.sel, b)
	if err != nil {
		a.log.Error("select configurations", zap.Error(err))
		return nil
	}
	if len(names) == 0 && !(b.Kind == runkind.Full) {
		a.log.Debug("no configuration subscribes to the change", zap.Strings("types", b.Types))
		return nil
	}
	s, err := a.sessions.ensure(ctx)
	if errors.Is(err, cluster.ErrNodeTaken) {
		return err
	}
	if err != nil {
		a.postpone(ctx, b, "open session", err)
		return nil
	}
	req := a.request(t)
	req.Names, req.Kind, req.Reason, req.Halt = names, b.Kind, describe(b), a.flag.raisedCh()
	res := a.runner.Run(ctx, s, req)
	return a.settle(ctx, b, res, true)
}

// settle carries out what rollout.Settle says follows the run of b that
// ended with res, for the loop and ccm.converge alike: b (or everything)
// goes back to the debouncer, after the backoff when wait is set (the
// loop's; an action returns at once and leaves the wait to the loop). Its
// error is one the agent must stop for. A failure's flag reaches the agent
// through its watch, in order with a resume that may already follow it.
func (a *Agent) settle(ctx context.Context, b debounce.Batch, res rollout.Result, wait bool) error {
	st := rollout.Settle(res)
	if st.Gate {
		a.observeGate(res)
	}
	if st.NewSession {
		a.log.Warn("lock lost mid-run; starting again from scratch on a new session")
		a.sessions.drop()
	}
	if st.Exit {
		// The flag is raised: exit, and let systemd start a clean
		// process, which stays halted by the flag.
		return res.Err
	}
	switch st.Again {
	case rollout.Same:
		a.deb.Requeue(b)
	case rollout.Everything:
		a.deb.Requeue(debounce.Batch{Kind: runkind.Full, Reasons: []string{"run again: " + describe(b)}})
	}
	if st.Backoff {
		if wait && ctx.Err() == nil {
			a.log.Warn("run failed; will retry", zap.Error(res.Err), zap.Duration("in", a.retry.Next()))
			a.sessions.dropLost()
			a.retry.Wait(ctx)
		}
		return nil
	}
	a.retry.Reset()
	a.presence.converged(a.runner.Converged())
	if b.Kind == runkind.Full {
		releaseMemory()
	}
	return nil
}

// prepare waits until the release pointer is read, and returns the
// selection a run of b converges and why it is broken (see next). A new
// configuration makes b a run of everything.
func (a *Agent) prepare(ctx context.Context, b *debounce.Batch) (*target, error) {
	wctx, cancel := context.WithTimeout(ctx, syncTimeout)
	err := a.release.wait(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	t, err := a.next(ctx)
	if err != nil {
		return nil, err
	}
	if t.sel != a.selection.Load() || t.broken != nil {
		b.Kind, b.Reasons = runkind.Full, append(b.Reasons, "new configuration")
	}
	return t, nil
}

// request is a run of t's selection, or the failed run that reports why
// the configuration it should converge is broken. Under the lock, the
// pointer is read again: a run prepared for another release than the
// one promoted now (the flag cleared by a watch ahead of the pointer's)
// applies nothing and is prepared again.
func (a *Agent) request(t *target) rollout.Request {
	return rollout.Request{Set: t.sel.set, Snapshot: a.snapshot, Target: a.releaseTarget, Release: t.sel.release,
		Broken: t.broken, Begin: func(ctx context.Context, gate cluster.Gate) error {
			id, err := a.release.atGate(gate)
			if err != nil && !errors.Is(err, errBadPointer) {
				return err
			}
			if id != t.release {
				return fmt.Errorf("%w: prepared for %q, promoted now %q", errReleaseMoved, releases.Short(t.release), releases.Short(id))
			}
			if t.broken == nil {
				a.adopt(t.sel)
			}
			return nil
		}}
}

// observeGate records the flag or the pause that held a run back, as read
// under the lock at the run's flag revision.
func (a *Agent) observeGate(res rollout.Result) {
	if res.Failure != nil {
		a.flag.observe(true, res.FlagRevision)
	}
	if res.Paused != nil {
		a.pause.observe(true, res.FlagRevision)
	}
}

// releaseMemory hands the garbage of a full run back to the kernel at
// once. A full run (the first, a resync, a reload) lists, decodes and
// renders everything, and leaves the heap at twice what the agent keeps;
// the runtime's background scavenger would return it over minutes, while
// the node counts it as the agent's memory. It costs one collection.
func releaseMemory() { debug.FreeOSMemory() }

// snapshot is the mirror, once it holds at least revision rev.
func (a *Agent) snapshot(ctx context.Context, rev int64) (*objects.Snapshot, error) {
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	snap, err := a.watcher.Snapshot(syncCtx, rev)
	if err != nil {
		// What it holds is certain only up to the last event applied:
		// the run claims no more.
		a.log.Warn("mirror not confirmed up to date; rendering what it holds, up to its last event", zap.Error(err))
		return a.mirror.AppliedSnapshot(), nil
	}
	return snap, nil
}

// postpone puts a batch back after an attempt that could not run, and
// waits before the next attempt.
func (a *Agent) postpone(ctx context.Context, b debounce.Batch, what string, err error) {
	a.deb.Requeue(b)
	if ctx.Err() != nil {
		return
	}
	a.log.Warn(what+" failed; will retry", zap.Error(err), zap.Duration("in", a.retry.Next()))
	a.sessions.dropLost()
	a.retry.Wait(ctx)
}
