package applier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
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
	// Quarantined lists the objects that failed on their own in this
	// run: left out, while the rest converged.
	Quarantined []Quarantined `json:"quarantined,omitempty"`
	// Held lists every object ("type/id") the run left out: failed now,
	// or held back by the snapshot's quarantine.
	Held []string `json:"held,omitempty"`
}

// Quarantined is an object that failed on its own in one configuration.
type Quarantined struct {
	Config   string `json:"config"`
	Type     string `json:"type"`
	ID       string `json:"id"`
	Revision int64  `json:"revision"`
	Error    string `json:"error"`
}

// quarantined gathers what the plans left out into r.
func (r *Report) quarantined(plans []*Plan) {
	held := map[string]bool{}
	for _, p := range plans {
		if p == nil {
			continue
		}
		for _, f := range p.Output.Failed {
			r.Quarantined = append(r.Quarantined, Quarantined{Config: p.Config.Name, Type: f.Type, ID: f.ID, Revision: f.Revision, Error: f.Err.Error()})
		}
		for ref := range p.Output.Held {
			held[ref] = true
		}
	}
	r.Held = slices.Sorted(maps.Keys(held))
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

// Select returns the configurations of set named in names that run on
// this node (their when matches its labels), in dependency order. No
// names select nothing: a change that no configuration subscribes to
// runs none (SelectAll is every configuration).
func (a *Applier) Select(set *configs.Set, names []string) ([]string, error) {
	only := map[string]bool{}
	for _, n := range names {
		if _, ok := set.Get(n); !ok {
			return nil, fmt.Errorf("configuration %q: not found in %s", n, set.Dir)
		}
		only[n] = true
	}
	return slices.DeleteFunc(a.SelectAll(set), func(n string) bool { return !only[n] }), nil
}

// SelectAll returns every configuration of set that runs on this node, in
// dependency order: what a full run runs.
func (a *Applier) SelectAll(set *configs.Set) []string {
	var out []string
	for _, n := range set.Order {
		if set.Configs[n].Matches(a.opts.Node.Labels) {
			out = append(out, n)
		}
	}
	return out
}

// PlanAll plans the named configurations in order. A configuration that
// fails to plan is reported in the joined error and left out. When names
// is everything this node runs, the plans also remove the files of
// configurations that were deleted or no longer match the node (their
// Config has no files, only a name).
func (a *Applier) PlanAll(set *configs.Set, snap *objects.Snapshot, names []string) ([]*Plan, error) {
	closeAll, err := a.open(false)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	plans, failed := a.planEach(context.Background(), set, snap, names, runkind.Full)
	var errs []error
	for _, f := range failed {
		errs = append(errs, f)
	}
	return slices.DeleteFunc(plans, func(p *Plan) bool { return p == nil }), errors.Join(errs...)
}

// planError is a configuration that failed to plan.
type planError struct {
	config string
	err    error
}

func (e planError) Error() string { return fmt.Sprintf("configuration %s: %v", e.config, e.err) }

// planEach plans names in order, then the orphans when names is all this
// node runs. plans[i] is nil where names[i] failed to plan; failed names
// each failure. A file a configuration no longer renders is removed only
// if no other configuration renders it now (it moved).
func (a *Applier) planEach(ctx context.Context, set *configs.Set, snap *objects.Snapshot, names []string, kind runkind.Kind) ([]*Plan, []planError) {
	a.beginCall()
	a.holdsOfAncestors(ctx, set, snap, names, kind)
	claimed := &claims{}
	var plans []*Plan
	var errs []planError
	for _, n := range names {
		a.progress.mark()
		p, err := a.plan(ctx, set.Configs[n], snap, claimed, kind)
		if err == nil && kind == runkind.Changed { // a full run plans every side itself
			err = a.collision(p, names)
		}
		if err != nil {
			p = nil
			errs = append(errs, planError{n, err})
		} else {
			claimed.claim(p)
		}
		plans = append(plans, p)
	}
	errs = append(errs, a.oneCreator(plans)...)
	if kind == runkind.Full && a.full(set, names) {
		for _, n := range a.orphans(set) {
			p, err := a.plan(ctx, &configs.Config{Name: n}, snap, claimed, runkind.Full)
			if err != nil {
				errs = append(errs, planError{n, fmt.Errorf("files of a configuration this node no longer runs: %w", err)})
				continue
			}
			p.Orphan = true
			plans = append(plans, p)
		}
	}
	for _, p := range plans {
		if p != nil {
			for _, f := range p.Output.Failed { // what the render held
				a.holds.note(f.Ref(), p.Config.Name)
			}
		}
	}
	for _, p := range plans {
		a.holdAll(p) // before anything is applied: every configuration holds what one held
	}
	for _, p := range plans {
		if p != nil {
			p.Changes = slices.DeleteFunc(p.Changes, func(c Change) bool {
				by, _ := claimed.of(c.Path)
				return c.removes() && by != "" && by != p.Config.Name
			})
		}
	}
	return plans, errs
}

// oneCreator leaves each account that two configurations of the run
// create to one of them, before any runs: every plan read the same
// etc/passwd, so both would create it, the second useradd would fail on
// an account that landed, and both manifests would record it, a
// customer's object as its owner beside the operator's configuration. An
// object's creation is refused (its object quarantined); of two
// configurations' own, the first in the run's order keeps it and the
// others fail, as they would in a later run ("exists and is not ccm's").
func (a *Applier) oneCreator(plans []*Plan) []planError {
	by := map[string][]*Plan{}
	objectOf := map[*Plan]map[string]string{}
	for _, p := range plans {
		if p == nil {
			continue
		}
		objectOf[p] = map[string]string{}
		for _, c := range p.Accounts {
			if c.Op != accounts.Create {
				continue
			}
			keys := []string{c.Kind + ":" + c.Name}
			if c.Private {
				keys = append(keys, "group:"+c.Name)
			}
			for _, k := range keys {
				if !slices.Contains(by[k], p) {
					by[k] = append(by[k], p)
				}
				objectOf[p][k] = c.Object
			}
		}
	}
	// Every conflict at once: one error per plan, or per object.
	type who struct {
		p      *Plan
		object string
	}
	conflicts := map[who][]error{}
	var order []who
	for _, k := range slices.Sorted(maps.Keys(by)) {
		ps := by[k]
		if len(ps) < 2 {
			continue
		}
		kind, name, _ := strings.Cut(k, ":")
		kept := false
		for _, p := range ps {
			object := objectOf[p][k]
			if object == "" && !kept {
				kept = true // the first configuration's own
				continue
			}
			var others []string
			for _, o := range ps {
				if o != p {
					others = append(others, o.Config.Name)
				}
			}
			w := who{p, object}
			if _, seen := conflicts[w]; !seen {
				order = append(order, w)
			}
			conflicts[w] = append(conflicts[w], fmt.Errorf("%s %s: configuration %s creates it in this run too: an account belongs to one declarer", kind, name, strings.Join(others, ", ")))
		}
	}
	var errs []planError
	for _, w := range order {
		err := errors.Join(conflicts[w]...)
		if w.object != "" {
			a.leaveOut(w.p, w.object, err)
			continue
		}
		errs = append(errs, planError{w.p.Config.Name, err})
		plans[slices.Index(plans, w.p)] = nil
	}
	return errs
}

// collision reports a file of p that a configuration not in this run
// rendered when it last ran: an event-driven run plans only what changed,
// so the other side of a collision may not be in it.
func (a *Applier) collision(p *Plan, names []string) error {
	if p.Output.SameFiles(a.ownedFrom[p.Config.Name]) { // every path is p's own
		return nil
	}
	for _, f := range p.Output.Files {
		if o, ok := a.owners[f.Path]; ok && o != p.Config.Name && !slices.Contains(names, o) {
			return fmt.Errorf("file %s is also written by configuration %q", f.Path, o)
		}
	}
	return nil
}

// own records which configuration renders each file, from the plans of a
// run; a full run of names also forgets configurations not among them.
//
// ownedFrom[c] is the output whose files own gave c last: the paths owned
// by c are exactly its files' until own gives one of them to another
// configuration, which forgets it. A plan with the same files as that
// output (render.Output.SameFiles) changes nothing here, and is skipped
// (two passes over every path of the node, each event).
func (a *Applier) own(plans []*Plan, names []string, full bool) {
	if full {
		for path, o := range a.owners {
			if !slices.Contains(names, o) {
				delete(a.owners, path)
				delete(a.ownedFrom, o)
			}
		}
	}
	for _, p := range plans {
		if p == nil {
			continue
		}
		n := p.Config.Name
		if p.Output.SameFiles(a.ownedFrom[n]) {
			continue
		}
		delete(a.ownedFrom, n)
		for path, o := range a.owners {
			if o == n && !p.Output.Has(path) {
				delete(a.owners, path)
			}
		}
		for _, f := range p.Output.Files {
			if o := a.owners[f.Path]; o != n { // a read is cheaper than a write
				a.owners[f.Path] = n
				delete(a.ownedFrom, o) // no longer all o's
			}
		}
		a.ownedFrom[n] = p.Output
	}
}

// full reports whether names is every configuration of set this node runs.
func (a *Applier) full(set *configs.Set, names []string) bool {
	return slices.Equal(a.SelectAll(set), names)
}

// runState is one run's bookkeeping.
type runState struct {
	outcomes map[string]*Outcome
	bad      map[string]bool // failed, skipped or aborted
	errs     []error
	// rollback is set by a failure that fails the run as a transaction
	// (rollsBack).
	rollback bool
}

func (rs *runState) fail(name string, err error) {
	o := rs.outcomes[name]
	o.Result, o.Error = Failed, err.Error()
	rs.bad[name] = true
	rs.errs = append(rs.errs, fmt.Errorf("configuration %s: %w", name, err))
	rs.rollback = rs.rollback || rollsBack(err)
}

// abort marks name as not run because the run stopped.
func (rs *runState) abort(r *Report, name string, cause error) {
	o := rs.outcomes[name]
	o.Result, o.Error, r.Aborted = Aborted, cause.Error(), true
	rs.bad[name] = true
}

// Run applies the named configurations. A run has two phases, so that
// nothing ever points at something already gone:
//
//  1. removals, in reverse dependency order (a vhost goes before the pool
//     whose socket it uses), files of deleted configurations first;
//  2. creations and updates, in dependency order.
//
// Each phase of a configuration is a journaled transaction with its own
// validate and on_change. A configuration whose dependency failed is
// skipped, and so are the removals of one whose dependent failed. A run
// that a crash interrupted is rolled back first (see journal). The run is
// one transaction: when a configuration fails, every phase the run carried
// out is rolled back (rollback.go). When ctx is
// done, Run stops before the next configuration and marks the rest
// aborted: the configuration under way is always finished.
//
// A run of kind runkind.Changed renders only what the changes touch and
// does not re-read files that this Applier wrote or verified and whose
// desired state is unchanged: drift made by hand is repaired by Repair
// (the drift watcher, internal/drift), or by the next runkind.Full run
// (start, resync, resume).
func (a *Applier) Run(ctx context.Context, kind runkind.Kind, set *configs.Set, snap *objects.Snapshot, names []string) *Report {
	a.repairs.serial.Lock()
	defer a.repairs.serial.Unlock()
	r := &Report{Revision: snap.Revision}
	a.progress.start()
	defer a.progress.stop()
	closeAll, err := a.open(true)
	if err != nil {
		for _, n := range names {
			r.Outcomes = append(r.Outcomes, Outcome{Config: n, Result: Failed, Error: err.Error()})
		}
		r.Err = fmt.Errorf("configuration %s: %w", strings.Join(names, ", "), err)
		return r
	}
	defer closeAll()
	rs := &runState{outcomes: map[string]*Outcome{}, bad: map[string]bool{}}
	var order []string
	add := func(n string) {
		if rs.outcomes[n] == nil {
			rs.outcomes[n] = &Outcome{Config: n, Result: Unchanged}
			order = append(order, n)
		}
	}
	if kind == runkind.Full {
		if err := a.restoreState(); err != nil {
			a.log.Error("restore the state directory", zap.Error(err))
		}
	}
	a.recoverAll(rs, add)
	a.run = &runTxn{}
	defer func() { a.run = nil }()
	for _, n := range names {
		add(n)
	}
	plans, failed := a.planEach(ctx, set, snap, names, kind)
	a.own(plans, names, kind == runkind.Full && a.full(set, names))
	for _, p := range plans {
		if p != nil && p.Orphan {
			add(p.Config.Name)
		}
	}
	stuck := false
	for _, f := range failed {
		add(f.config)
		switch {
		case ctx.Err() != nil:
			rs.abort(r, f.config, context.Cause(ctx))
		default:
			rs.fail(f.config, f.err)
			stuck = stuck || errors.Is(f.err, render.ErrStuck)
		}
	}
	if stuck { // nothing more may run: the process must exit
		for _, n := range order {
			if !rs.bad[n] {
				rs.abort(r, n, render.ErrStuck)
			}
		}
		plans = nil
	}
	removed := map[string]bool{} // removal phase carried out
	// Phase 1: removals, orphans first, then reverse dependency order.
	for i := len(plans) - 1; i >= 0; i-- {
		p := plans[i]
		if p == nil || rs.bad[p.Config.Name] {
			continue
		}
		rm := p.removals()
		if rm == nil || a.dependentFailed(set, p.Config.Name, rs.bad) {
			continue
		}
		a.step(ctx, r, rs, rm, p.kept())
		if rs.bad[p.Config.Name] {
			continue
		}
		removed[p.Config.Name] = true
		// Its converged render still lists what is now removed: a repair
		// must not bring it back, whatever its writes do next.
		a.unsettle(p.Config.Name)
		if p.Orphan {
			if err := a.dropManifest(p.Config.Name); err != nil {
				rs.fail(p.Config.Name, err)
			}
		}
	}
	// Phase 2: creations and updates, in dependency order.
	var applied []*Plan // what phase 2 carried out, in order
	for i, p := range plans {
		if p == nil || p.Orphan {
			continue
		}
		n := names[i]
		if rs.bad[n] {
			continue
		}
		if dep := failedDependency(p.Config, rs.bad); dep != "" {
			o := rs.outcomes[n]
			o.Result, o.Error = Skipped, fmt.Sprintf("dependency %s did not converge", dep)
			rs.bad[n] = true
			continue
		}
		a.holdAll(p) // what an earlier configuration's tools or checks held
		fw := p.writes()
		m, err := a.loadManifest(n)
		if err == nil {
			fw.PendingOnChange = m.OnChangePending
		}
		var files []string
		if err == nil && m.unchanged(p.Output, m.Files) && len(p.stale()) == 0 {
			files = m.Files // the same files: not listed again (applyPlan)
		} else {
			files = renderedPaths(p.Output)
			if !removed[n] { // still ours: removed by a later run
				files = append(files, p.stale()...)
			}
		}
		before := len(a.holds)
		if err := a.step(ctx, r, rs, fw, files); err == nil || errors.Is(err, ErrOnChange) {
			a.settle(fw)
		}
		if len(a.holds) > before { // this configuration held objects while applying
			a.rollBackHeld(ctx, applied, fw.Config.Name)
		}
		applied = append(applied, fw)
	}
	if rs.rollback {
		a.rollBackRun(ctx, rs, a.run)
	}
	a.publishManaged()
	for _, n := range order {
		r.Outcomes = append(r.Outcomes, *rs.outcomes[n])
	}
	r.quarantined(plans)
	r.Err = errors.Join(rs.errs...)
	return r
}

// step applies one phase of one configuration and records its outcome.
func (a *Applier) step(ctx context.Context, r *Report, rs *runState, p *Plan, files []string) error {
	n := p.Config.Name
	a.progress.mark()
	if ctx.Err() != nil {
		rs.abort(r, n, context.Cause(ctx))
		return context.Cause(ctx)
	}
	o := rs.outcomes[n]
	start := time.Now()
	err := a.applyPlan(ctx, p, files)
	a.remember(p, err == nil || errors.Is(err, ErrOnChange))
	c, u, rm := p.Counts()
	o.Created, o.Updated, o.Removed = o.Created+c, o.Updated+u, o.Removed+rm
	if errors.Is(err, ErrFenced) { // not this configuration's failure
		a.log.Warn("configuration stopped: the lock was lost", zap.String("config", n), zap.Error(err))
		rs.abort(r, n, err)
		return err
	}
	if err != nil {
		a.log.Error("configuration failed", zap.String("config", n), zap.Error(err))
		rs.fail(n, err)
		return err
	}
	if p.Changed() {
		o.Result = Changed
	}
	a.log.Info("configuration converged", zap.String("config", n), zap.String("result", string(o.Result)),
		zap.Int("created", c), zap.Int("updated", u), zap.Int("removed", rm), zap.Duration("took", time.Since(start)))
	return nil
}

// recoverAll rolls back every run a crash interrupted, before anything
// else (the agent does it at start already: RollBackInterrupted).
func (a *Applier) recoverAll(rs *runState, add func(string)) {
	names, err := a.interrupted()
	if err != nil {
		a.log.Error("read journals", zap.Error(err))
		return
	}
	for _, n := range names {
		add(n)
		if err := a.recover(n); err != nil {
			rs.fail(n, fmt.Errorf("rolling back the run a crash interrupted: %w", err))
			continue
		}
		rs.outcomes[n].Result = Changed
	}
}

// dependentFailed reports whether a configuration that depends on name
// failed: name's removals could pull something from under it.
func (a *Applier) dependentFailed(set *configs.Set, name string, bad map[string]bool) bool {
	for n := range bad {
		if c, ok := set.Get(n); ok && slices.Contains(c.DependsOn, name) {
			return true
		}
	}
	return false
}

func failedDependency(cfg *configs.Config, bad map[string]bool) string {
	for _, d := range cfg.DependsOn {
		if bad[d] {
			return d
		}
	}
	return ""
}

// claims is what the configurations of a run planned so far render: a
// path is claimed by the plan that renders it, its held objects' files
// too. It asks each plan's output rather than copy every path into one
// map: a run of one configuration of 10,000 files hashed 10,000 paths
// into a map that nothing read.
type claims struct {
	plans []*Plan
	paths map[string]string // path -> configuration, from a caller of Plan or Apply
}

// of returns the configuration that claims path.
func (c *claims) of(path string) (string, bool) {
	if c == nil {
		return "", false
	}
	for i := len(c.plans) - 1; i >= 0; i-- { // the last claim, as a map's last write
		if c.plans[i].Output.Renders(path) {
			return c.plans[i].Config.Name, true
		}
	}
	n, ok := c.paths[path]
	return n, ok
}

// claim adds p's files to c.
func (c *claims) claim(p *Plan) { c.plans = append(c.plans, p) }
