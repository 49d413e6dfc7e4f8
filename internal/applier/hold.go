package applier

import (
	"context"
	"maps"
	"slices"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// A hold is a property of the object, not of the configuration that found
// it: an object one configuration quarantines or refuses in a run is held
// by every configuration of that run, on this node. Otherwise a user that
// unix-users refuses as a system account would still get the root crontab
// that the next configuration renders for it.
//
// runHolds records the objects held in the current run (leaveOut adds
// to it); holdAll applies them to every plan of the run before anything is
// applied, and again before each configuration's creations and updates,
// for what an earlier configuration's tools or checks refused.

// runHolds maps an object ("type/id") held in this run to the
// configuration that held it first.
type runHolds map[string]string

// note records that config held object.
func (h runHolds) note(object, config string) {
	if h == nil || object == "" {
		return
	}
	if _, ok := h[object]; !ok {
		h[object] = config
	}
}

// holdAll holds, in p, every object the run holds: everything p renders
// for it is dropped, its files stay as they are, and it is not recorded as
// p's own quarantine (the configuration that found it records it).
func (a *Applier) holdAll(p *Plan) {
	if p == nil || p.Output == nil {
		return
	}
	for _, object := range slices.Sorted(maps.Keys(a.holds)) {
		if p.Output.Held[object] || !a.renders(p, object) {
			continue
		}
		p.Output.HoldBack(object)
		a.dropObject(p, object)
		if p.HeldBy == nil {
			p.HeldBy = map[string]string{}
		}
		p.HeldBy[object] = a.holds[object]
	}
}

// renders reports whether p has anything for object.
func (a *Applier) renders(p *Plan, object string) bool {
	out := p.Output
	return slices.ContainsFunc(out.Files, func(f render.File) bool { return f.Object == object }) ||
		slices.ContainsFunc(out.Directories, func(d render.Directory) bool { return d.Object == object }) ||
		slices.ContainsFunc(out.Users, func(u accounts.User) bool { return u.Object == object }) ||
		slices.ContainsFunc(out.Groups, func(g accounts.Group) bool { return g.Object == object }) ||
		slices.ContainsFunc(p.Accounts, func(c accounts.Change) bool { return c.Object == object })
}

// dropObject takes what p would do for object out of p.
func (a *Applier) dropObject(p *Plan, object string) {
	p.Accounts = slices.DeleteFunc(p.Accounts, func(c accounts.Change) bool { return c.Object == object })
	p.Changes = slices.DeleteFunc(p.Changes, func(c Change) bool { return c.file != nil && c.file.Object == object })
	p.Dirs = slices.DeleteFunc(p.Dirs, func(d DirChange) bool { return d.Dir.Object == object })
}

// holdsOfAncestors plans, without applying them, the configurations that
// names depend on (transitively) but that this run does not include, and
// notes what they hold: a run of crontab alone (apply --once --config, or
// a change of a type only crontab subscribes to) must not write the root
// crontab of a user that unix-users refuses. Their plans are discarded.
func (a *Applier) holdsOfAncestors(ctx context.Context, set *configs.Set, snap *objects.Snapshot, names []string, kind runkind.Kind) {
	var todo []string
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	var visit func(n string)
	visit = func(n string) {
		c, ok := set.Get(n)
		if !ok {
			return
		}
		for _, d := range c.DependsOn {
			if seen[d] {
				continue
			}
			seen[d] = true
			visit(d)
			if dc, ok := set.Get(d); ok && dc.Matches(a.opts.Node.Labels) {
				todo = append(todo, d)
			}
		}
	}
	for _, n := range names {
		visit(n)
	}
	if len(todo) == 0 {
		return
	}
	pending, uids, gids := maps.Clone(a.pending), maps.Clone(a.takenUIDs), maps.Clone(a.takenGIDs)
	defer func() { a.pending, a.takenUIDs, a.takenGIDs = pending, uids, gids }()
	for _, n := range todo {
		p, err := a.plan(ctx, set.Configs[n], snap, &claims{}, kind)
		if err != nil {
			a.log.Warn("planning a dependency for its holds", zap.String("config", n), zap.Error(err))
			continue
		}
		for _, f := range p.Output.Failed {
			a.holds.note(f.Ref(), n)
		}
	}
}

// rollBackHeld undoes, for every object that config held while it
// applied (its tools or checks refused it), what the configurations that
// already ran in this run changed for that object: each of their files
// goes back to what its journal says it was, and their on_change runs
// again. So an object is held across the whole run, also where a
// configuration before the one that refused it had already written it.
func (a *Applier) rollBackHeld(ctx context.Context, applied []*Plan, config string) {
	if a.run == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	for _, q := range applied {
		var restored bool
		var last *journal
		for _, j := range a.run.done {
			if j.Config == q.Config.Name {
				last = j
			}
		}
		if last == nil {
			continue
		}
		for _, c := range q.Changes {
			if c.file == nil || c.file.Object == "" || a.holds[c.file.Object] != config {
				continue
			}
			for _, f := range last.Files {
				if f.Path != c.Path {
					continue
				}
				err := a.restoreFile(f)
				delete(a.known, f.Real)
				if err != nil {
					a.log.Error("roll back a held object's file", zap.String("config", q.Config.Name), zap.String("path", f.Path), zap.Error(err))
					continue
				}
				restored = true
				a.log.Warn("rolled back: its object is held by a later configuration", zap.String("config", q.Config.Name),
					zap.String("path", f.Path), zap.String("object", c.file.Object), zap.String("held_by", config))
			}
		}
		if restored {
			if err := a.onChangeAgain(ctx, last); err != nil {
				a.log.Error("on_change after rolling back a held object", zap.String("config", q.Config.Name), zap.Error(err))
			}
		}
	}
}
