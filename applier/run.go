package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/objects"
)

// Result is how one configuration's run ended.
type Result string

// The results of a configuration in a run.
const (
	Unchanged Result = "unchanged"
	Changed   Result = "changed"
	Failed    Result = "failed"
	// Skipped: the node's labels do not match when, or a dependency failed.
	Skipped Result = "skipped"
	// Aborted: the run stopped (lock lost, shutdown) before it got there.
	Aborted Result = "aborted"
)

// Outcome is the result of one configuration in a run.
type Outcome struct {
	Config  string `json:"config"`
	Result  Result `json:"result"`
	Created int    `json:"created,omitempty"`
	Updated int    `json:"updated,omitempty"`
	Removed int    `json:"removed,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Report is the result of a run over several configurations.
type Report struct {
	Revision int64     `json:"revision"`
	Outcomes []Outcome `json:"configurations"`
	// Err joins the errors of the failed configurations, naming each.
	Err error `json:"-"`
	// Aborted is set when the run stopped early because ctx was done.
	Aborted bool `json:"aborted,omitempty"`
}

// Failed reports whether a configuration failed.
func (r *Report) Failed() bool { return r.Err != nil }

// FirstFailure returns the first failed configuration and its error.
func (r *Report) FirstFailure() (config, msg string) {
	for _, o := range r.Outcomes {
		if o.Result == Failed {
			return o.Config, o.Error
		}
	}
	return "", ""
}

// Select returns the names of set to run on this node, in dependency order:
// all of them, or only those named, skipping those whose when does not
// match the node's labels.
func (a *Applier) Select(set *configs.Set, names []string) ([]string, error) {
	only := map[string]bool{}
	for _, n := range names {
		if _, ok := set.Get(n); !ok {
			return nil, fmt.Errorf("configuration %q: not found in %s", n, set.Dir)
		}
		only[n] = true
	}
	var out []string
	for _, n := range set.Order {
		if len(only) > 0 && !only[n] {
			continue
		}
		if set.Configs[n].Matches(a.opts.Node.Labels) {
			out = append(out, n)
		}
	}
	return out, nil
}

// PlanAll plans the named configurations in order. A configuration that
// fails to plan is reported in the joined error and left out.
func (a *Applier) PlanAll(set *configs.Set, snap *objects.Snapshot, names []string) ([]*Plan, error) {
	claimed := map[string]string{}
	var plans []*Plan
	var errs []error
	for _, n := range names {
		p, err := a.Plan(set.Configs[n], snap, claimed)
		if err != nil {
			errs = append(errs, fmt.Errorf("configuration %s: %w", n, err))
			continue
		}
		claim(claimed, p)
		plans = append(plans, p)
	}
	return plans, errors.Join(errs...)
}

// Run applies the named configurations in order. A configuration whose
// dependency failed is skipped. When ctx is done, Run stops before the next
// configuration and marks the rest aborted: the configuration under way is
// always finished, so that none is left half-applied.
func (a *Applier) Run(ctx context.Context, set *configs.Set, snap *objects.Snapshot, names []string) *Report {
	return a.run(ctx, set, snap, names, false)
}

// RunChanged is Run for a run triggered by object changes: it renders only
// what the changes touch and does not re-read files that this Applier wrote
// or verified and whose desired state is unchanged. Drift made by hand is
// repaired by the next Run (start, resync, resume), not by RunChanged.
func (a *Applier) RunChanged(ctx context.Context, set *configs.Set, snap *objects.Snapshot, names []string) *Report {
	return a.run(ctx, set, snap, names, true)
}

func (a *Applier) run(ctx context.Context, set *configs.Set, snap *objects.Snapshot, names []string, trust bool) *Report {
	r := &Report{Revision: snap.Revision}
	claimed := map[string]string{}
	bad := map[string]bool{}
	var errs []error
	for i, n := range names {
		cfg := set.Configs[n]
		o := Outcome{Config: n}

		switch dep := failedDependency(cfg, bad); {
		case ctx.Err() != nil:
			o.Result, o.Error, r.Aborted = Aborted, context.Cause(ctx).Error(), true
		case dep != "":
			o.Result, o.Error = Skipped, fmt.Sprintf("dependency %s did not converge", dep)
		default:
			var p *Plan
			o, p = a.runOne(ctx, cfg, snap, claimed, trust)
			if p != nil && i < len(names)-1 { // the last one's paths need no record
				claim(claimed, p)
			}
		}
		if o.Result != Unchanged && o.Result != Changed {
			bad[n] = true
		}
		if o.Result == Failed {
			errs = append(errs, fmt.Errorf("configuration %s: %s", n, o.Error))
		}
		r.Outcomes = append(r.Outcomes, o)
	}
	r.Err = errors.Join(errs...)
	return r
}

func (a *Applier) runOne(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, claimed map[string]string, trust bool) (Outcome, *Plan) {
	start := time.Now()
	o := Outcome{Config: cfg.Name}
	p, err := a.apply(ctx, cfg, snap, claimed, trust)
	if p != nil {
		o.Created, o.Updated, o.Removed = p.Counts()
	}
	switch {
	case err != nil:
		o.Result, o.Error = Failed, err.Error()
		a.log.Error("configuration failed", zap.String("config", cfg.Name), zap.Error(err))
		return o, p
	case p.Changed():
		o.Result = Changed
	default:
		o.Result = Unchanged
	}
	a.log.Info("configuration converged", zap.String("config", cfg.Name), zap.String("result", string(o.Result)),
		zap.Int("created", o.Created), zap.Int("updated", o.Updated), zap.Int("removed", o.Removed),
		zap.Duration("took", time.Since(start)))
	return o, p
}

func failedDependency(cfg *configs.Config, bad map[string]bool) string {
	for _, d := range cfg.DependsOn {
		if bad[d] {
			return d
		}
	}
	return ""
}

func claim(claimed map[string]string, p *Plan) {
	for _, f := range p.Output.Files {
		claimed[f.Path] = p.Config.Name
	}
}
