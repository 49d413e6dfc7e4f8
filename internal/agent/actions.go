package agent

import (
	"context"
	"strings"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/debounce"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// The built-in actions every agent answers.
const (
	ActionPlan     = actions.BuiltinPrefix + "plan"
	ActionConverge = actions.BuiltinPrefix + "converge"
)

// PlanRelease is the ccm.plan parameter that names a stored release (its
// full id): the node plans under it, with nothing applied.
const PlanRelease = "release"

// PlanOutput is the output of the ccm.plan action.
type PlanOutput struct {
	Changed bool `json:"changed"`
	// Summary is the plan's last line ("Plan: 1 to create, ...").
	Summary string `json:"summary"`
	// Diff is the whole plan as ccm plan prints it.
	Diff     string `json:"diff"`
	Revision int64  `json:"revision"`
}

// runActions answers the node's actions once the node is announced: an
// agent that is refused the node name must not touch its replies.
func (a *Agent) runActions(ctx context.Context) {
	select {
	case <-a.sessions.announced():
	case <-ctx.Done():
		return
	}
	env := []string{"CCM_NODE=" + a.opts.Node, "CCM_ROOT=" + a.opts.Root}
	cgroups, why := actions.ResolveCgroups(a.opts.Cgroup)
	if cgroups == nil {
		a.log.Warn("actions: handler runs are contained by their process group alone: a process that leaves it (setsid) outlives the run", zap.String("reason", why))
	}
	actions.NewEngine(actions.Options{
		Client: a.opts.Client, Prefix: a.opts.Prefix, Node: a.opts.Node, Env: env,
		Handlers:      func() *actions.Handlers { return a.selection.Load().handlers },
		Builtins:      map[string]actions.Builtin{ActionPlan: a.planAction, ActionConverge: a.convergeAction},
		BuiltinParams: map[string][]string{ActionPlan: {PlanRelease}},
		Keys:          func() *actions.AuthorizedKeys { return a.selection.Load().keys },
		NodeKey:       a.nodeKey, StateDir: a.opts.StateDir, Instance: a.instance, Cgroups: cgroups,
		Serial: a.serial, Retention: a.opts.Retention,
		Logger: a.log, Metrics: a.metrics,
	}).Run(ctx)
}

// serial runs fn holding the cluster lock, as no run of this node does.
func (a *Agent) serial(ctx context.Context, fn func()) error {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	s, err := a.sessions.ensure(ctx)
	if err != nil {
		return err
	}
	lock, err := s.Lock(ctx, nil) // an action is no change to canary
	if err != nil {
		return err
	}
	defer lock.Release()
	if err := lock.Fence(); err != nil { // the command is the next side effect
		return err
	}
	fn()
	return nil
}

// planAction is ccm.plan: this node's plan against the newest objects,
// with nothing applied. It plans with an applier of its own, so that it
// never waits for a run.
func (a *Agent) planAction(ctx context.Context, req *api.Request) (any, error) {
	if _, err := a.watcher.Lag(ctx); err != nil {
		return nil, err
	}
	qs, err := a.cluster.Quarantines(ctx)
	if err != nil {
		return nil, err
	}
	snap := rollout.Hold(a.mirror.Snapshot(), qs)
	cur := a.selection.Load()
	set, opts := cur.set, a.applierOptions()
	id, ok := req.Params[PlanRelease]
	if promoted, _, err := a.release.pointer(); !ok && err == nil && promoted != "" && promoted != cur.release {
		id, ok = promoted, true // what the node's next run converges: the promoted release
	}
	if ok { // the plan under that release, not the loaded one
		if err := releases.CheckID(id); err != nil {
			return nil, err
		}
		dir, cleanup, err := releases.NewStore(a.opts.Client, a.opts.Prefix).Open(ctx, id, a.verifyRelease())
		if err != nil {
			return nil, err
		}
		defer cleanup()
		if set, err = configs.Load(dir); err != nil {
			return nil, err
		}
		opts.ConfigDir = dir
	}
	ap := applier.New(opts)
	plans, err := ap.PlanAll(set, snap, ap.SelectAll(set))
	var b strings.Builder
	changed := applier.WritePlans(&b, plans, false)
	text := strings.TrimRight(b.String(), "\n")
	out := PlanOutput{Changed: changed, Diff: b.String(), Revision: snap.Revision}
	out.Summary = text[strings.LastIndexByte(text, '\n')+1:]
	return out, err
}

// convergeAction is ccm.converge: a full run now, through the lock, like
// ccm apply --once. Its output is the run's status.
func (a *Agent) convergeAction(ctx context.Context, _ *api.Request) (any, error) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	b := debounce.Batch{Kind: runkind.Full}
	t, err := a.prepare(ctx, &b)
	if err != nil {
		return nil, err
	}
	names := a.applier.SelectAll(t.sel.set)
	s, err := a.sessions.ensure(ctx)
	if err != nil {
		return nil, err
	}
	req := a.request(t)
	req.Names, req.Kind, req.Reason = names, runkind.Full, "action "+ActionConverge
	res := a.runner.Run(ctx, s, req)
	// What the run leaves to do is the agent loop's, as after its own
	// runs: the same settle, without the wait.
	if err := a.settle(ctx, debounce.Batch{Kind: runkind.Full, Reasons: []string{"action " + ActionConverge}}, res, false); err != nil {
		a.stop(err)
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Status, nil
}
