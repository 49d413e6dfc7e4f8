package agent

import (
	"context"
	"reflect"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/drift"
)

// driftRepairer is the drift watcher's view of the agent: the applier's
// repair, which takes no cluster lock (it restores what this node already
// converged and validated under it), held back while the failure flag or
// the pause says to change nothing.
type driftRepairer Agent

// Managed is the applier's converged paths.
func (r *driftRepairer) Managed() applier.Managed { return r.applier.Managed() }

// Repair checks reals and, with fix and the rollout neither halted nor
// paused, restores them. A failed repair asks for a full run: under the
// lock, it fails the same way and raises the failure record, or converges
// if the failure was passing.
func (r *driftRepairer) Repair(ctx context.Context, reals []string, fix bool) *applier.RepairReport {
	a := (*Agent)(r)
	if fix && (!a.flag.isClear() || !a.pause.isClear()) {
		fix = false
		a.log.Info("drift: the rollout is halted or paused; only reporting drift (the run after it lifts repairs it)")
	}
	rep := a.applier.Repair(ctx, reals, fix)
	if err := rep.Err(); err != nil {
		a.log.Error("drift repair failed; files restored as a run restores them; a full run under the lock records it", zap.Error(err))
		a.deb.AddAll("drift repair failed")
	}
	return rep
}

// runDrift watches the managed paths until ctx is done.
func (a *Agent) runDrift(ctx context.Context) {
	if err := a.drift.Run(ctx); err != nil {
		a.log.Error("drift watcher stopped; drift is repaired by full runs only", zap.Error(err))
	}
}

// newDrift builds the drift watcher from the agent's options.
func (a *Agent) newDrift() *drift.Watcher {
	o := a.opts.Drift
	o.Logger, o.Metrics = a.log, a.metrics
	return drift.New((*driftRepairer)(a), o, a.presence.drifted)
}

// drifted announces what the drift watcher reports, when it changed (not
// for a mere change of the watch count).
func (p *presence) drifted(s drift.Status) {
	d := &api.Drift{Mode: s.Mode, Repairs: s.Repairs, Backoff: s.Backoff, Scanned: s.Scanned}
	if l := s.Last; l != nil {
		d.Path, d.Config, d.What, d.Time, d.Fixed = l.Path, l.Config, l.What, l.Time, l.Fixed
	}
	p.mu.Lock()
	changed := !reflect.DeepEqual(p.current.Drift, d)
	p.current.Drift = d
	p.mu.Unlock()
	if changed {
		p.wake()
	}
}
