package applier

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/render"
)

// needsAccounts reports whether planning p reads the root's accounts: it
// declares some, owned some, or has an owner to resolve.
func needsAccounts(out *render.Output, m manifest) bool {
	if len(out.Users)+len(out.Groups)+len(m.Users)+len(m.Groups) > 0 {
		return true
	}
	for i := range out.Directories {
		if unresolved(out.Directories[i].Ownership) {
			return true
		}
	}
	for i := range out.Files {
		if unresolved(out.Files[i].Ownership) {
			return true
		}
	}
	return false
}

// unresolved reports whether an owner or group is named but its ID is not
// known yet.
func unresolved(o configs.Ownership) bool {
	return (o.Owner != "" && o.UID == nil) || (o.Group != "" && o.GID == nil)
}

// planAccounts plans p's accounts and resolves its owners. An object whose
// account breaks a rule, or whose owner does not exist and is not created
// by this run, is left out of p (quarantined); a configuration-wide one
// fails the plan.
func (a *Applier) planAccounts(p *Plan, m manifest) error {
	if !needsAccounts(p.Output, m) {
		return nil
	}
	db, err := accounts.Read(a.opts.Root)
	if err != nil {
		return fmt.Errorf("accounts: %w", err)
	}
	retired, err := a.loadRetired()
	if err != nil {
		return err
	}
	st := accounts.State{Owned: m.Owned, AllOwned: a.allOwned(), Retired: retired, Held: p.Output.Held,
		TakenUIDs: a.takenUIDs, TakenGIDs: a.takenGIDs}
	p.declared = m.Owned.Declared(p.Output.Groups, p.Output.Users, p.Output.Held, st.Adoptable(p.Config.Accounts.Adopt)...)
	st.Owned = p.declared
	changes, problems := db.Plan(p.Output.Groups, p.Output.Users, p.Config.Accounts, st, a.opts.Root)
	var errs []error
	for _, pr := range problems {
		if pr.Object == "" {
			errs = append(errs, pr.Err)
			continue
		}
		a.leaveOut(p, pr.Object, pr.Err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, c := range changes {
		if c.Object == "" || !p.Output.Held[c.Object] {
			p.Accounts = append(p.Accounts, c)
		}
		if c.Op == accounts.Create {
			a.pending[c.Kind+":"+c.Name] = true
			if c.Private {
				a.pending["group:"+c.Name] = true
			}
			a.take(c)
		}
	}
	return a.resolveOwners(p, db, false)
}

// take records the IDs creation c gives, for the plans after it in this
// run (accounts.State.TakenUIDs).
func (a *Applier) take(c accounts.Change) {
	if a.takenUIDs == nil {
		a.takenUIDs, a.takenGIDs = map[int]string{}, map[int]string{}
	}
	switch {
	case c.ID < 0:
	case c.Kind == "user":
		a.takenUIDs[c.ID] = c.Name
	default:
		a.takenGIDs[c.ID] = c.Name
	}
	if c.Private && c.PrivateGID >= 0 {
		a.takenGIDs[c.PrivateGID] = c.Name
	}
}

// resolveOwners fills the IDs of named owners and groups from db. A name
// that an account of this run creates is left for final, after the
// accounts exist; with final, or for any other name, a missing account
// leaves the object out (or fails the configuration).
func (a *Applier) resolveOwners(p *Plan, db *accounts.DB, final bool) error {
	var errs []error
	// The objects left out, once every entry is resolved: leaving one out
	// deletes from the slices walked here.
	failed := map[string]error{}
	var order []string
	defer func() {
		for _, object := range order {
			a.leaveOut(p, object, failed[object])
		}
	}()
	ccms := a.allOwned()
	// The verdict on an account depends on its name and ID alone: once per
	// call, not once per file of every customer.
	checked := map[string]error{}
	check := func(field, name string, id int) error {
		k := field + "\x00" + name + "\x00" + strconv.Itoa(id)
		err, ok := checked[k]
		if !ok {
			err = p.Config.Accounts.CheckOwnerAccount(db, field, name, id, ccms)
			checked[k] = err
		}
		return err
	}
	resolve := func(own *configs.Ownership, path, object string) {
		if !unresolved(*own) {
			return
		}
		for _, f := range []struct {
			kind, field, name string
			id                **int
			look              func(string) (int, bool)
		}{{"user", "owner", own.Owner, &own.UID, db.UID}, {"group", "group", own.Group, &own.GID, db.GID}} {
			if f.name == "" || *f.id != nil {
				continue
			}
			id, ok := f.look(f.name)
			var err error
			switch {
			case ok:
				// A customer's data must not hand a path to root, nobody
				// or a group that reaches root (accounts.Policy.CheckOwner).
				if err = check(f.field, f.name, id); err == nil {
					*f.id = &id
					continue
				}
				err = fmt.Errorf("%s: %w", path, err)
			case !final && a.pending[f.kind+":"+f.name]:
				continue
			default:
				err = fmt.Errorf("%s: %s %s does not exist on this node and no configuration of this run creates it", path, f.field, f.name)
			}
			if object == "" {
				errs = append(errs, err)
			} else if _, seen := failed[object]; !seen {
				failed[object] = fmt.Errorf("%w (object %s)", err, object)
				order = append(order, object)
			}
			return
		}
	}
	for i := range p.Output.Directories {
		d := &p.Output.Directories[i]
		resolve(&d.Ownership, d.Path, d.Object)
	}
	for i := range p.Output.Files {
		f := &p.Output.Files[i]
		resolve(&f.Ownership, f.Path, f.Object)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if final {
		for i := range p.Dirs {
			d := &p.Dirs[i].Dir
			resolve(&d.Ownership, d.Path, d.Object)
		}
		for i := range p.Changes {
			if f := p.Changes[i].file; f != nil {
				resolve(&f.Ownership, f.Path, f.Object)
			}
		}
	}
	return errors.Join(errs...)
}

// splitRef splits "type/id".
func splitRef(ref string) (typ, id string) {
	typ, id, _ = strings.Cut(ref, "/")
	return typ, id
}

// leaveOut quarantines object in p: everything it renders is dropped, its
// files stay as they are.
func (a *Applier) leaveOut(p *Plan, object string, err error) {
	f := render.ObjectFailure{Err: err}
	f.Type, f.ID, f.Revision = a.objectOf(object)
	p.Output.Drop(f)
	a.holds.note(object, p.Config.Name)
	p.Accounts = slices.DeleteFunc(p.Accounts, func(c accounts.Change) bool { return c.Object == object })
	p.Changes = slices.DeleteFunc(p.Changes, func(c Change) bool { return c.file != nil && c.file.Object == object })
	p.Dirs = slices.DeleteFunc(p.Dirs, func(d DirChange) bool { return d.Dir.Object == object })
	a.log.Warn("object quarantined", zap.String("config", p.Config.Name), zap.String("object", object), zap.Error(err))
}

// objectOf splits "type/id" and finds the revision in the run's snapshot.
func (a *Applier) objectOf(ref string) (typ, id string, rev int64) {
	typ, id = splitRef(ref)
	if a.snap != nil {
		for _, o := range a.snap.List(typ) {
			if o.ID == id {
				return typ, id, o.Revision
			}
		}
	}
	return typ, id, 0
}

// applyAccounts runs p's account changes: creations and changes (removes
// false) before the files, removals (removes true) after them. A failure
// of an object's account quarantines that object; any other fails the
// configuration. What the changes created is recorded in the manifest
// before anything else can fail, so that ccm removes only what it made.
func (a *Applier) applyAccounts(ctx context.Context, p *Plan, removes bool) error {
	m, err := a.loadManifest(p.Config.Name)
	if err != nil {
		return err
	}
	// Objects too: which object each account was made for is what keeps
	// another object from it (accounts.claims); a run that dropped it handed
	// every account over at the next.
	owned := accounts.Owned{Users: slices.Clone(m.Users), Groups: slices.Clone(m.Groups), Objects: maps.Clone(m.Owned.Objects)}
	// An account made before ccm recorded for whom is recorded now as the
	// plan saw its declarers (accounts.Owned.Declared, before any object
	// was left out: one left out after would make a contested account its
	// squatter's candidate): the configuration's, which no object takes
	// over once it stops declaring it, one object's, or contested.
	owned = owned.Records(p.declared)
	recorded := !maps.Equal(owned.Objects, m.Owned.Objects)
	retired, err := a.loadRetired()
	if err != nil {
		return err
	}
	if slices.ContainsFunc(p.Accounts, func(c accounts.Change) bool { return c.Removes() == removes }) {
		// A plan may preview a root without account files; a run needs them.
		db, err := accounts.Read(a.opts.Root)
		if err == nil {
			err = db.Usable()
		}
		if err != nil {
			return err
		}
	}
	ran := false
	var failed error
	held := func(c accounts.Change) bool { return c.Object != "" && p.Output.Held[c.Object] }
	timeout := cmp.Or(p.Config.Timeout, configs.DefaultTimeout) // an orphan sets none
	// One Runner: each account's own tool now, every password of the
	// configuration in one chpasswd run once they exist.
	tools := &accounts.Runner{Timeout: timeout}
	done := func(c accounts.Change, err error) error {
		if err != nil && c.Op == accounts.Create && !a.ownedElsewhere(p.Config.Name, c) {
			if db, rerr := accounts.Read(a.opts.Root); rerr == nil && c.Landed(db) {
				owned, retired = owned.After(c), retired.After(c)
			}
		}
		switch {
		case errors.Is(err, accounts.ErrNodeFailure):
			return err // the node's: the configuration fails, and no customer is held for it
		case err != nil && c.Object != "":
			a.leaveOut(p, c.Object, err)
			return nil
		case err != nil:
			return err
		}
		a.log.Info("account", zap.String("config", p.Config.Name), zap.String("change", c.Line))
		owned = owned.After(c)
		retired = retired.After(c)
		return nil
	}
	for _, c := range slices.Clone(p.Accounts) {
		if c.Removes() != removes || held(c) {
			continue
		}
		if failed = fenced(ctx, "changing "+c.Kind+" "+c.Name); failed != nil {
			break
		}
		queued, err := tools.Run(ctx, c)
		ran = true
		if queued {
			continue
		}
		if failed = done(c, err); failed != nil {
			break
		}
	}
	if failed == nil {
		// A configuration that failed sets none of its queued passwords: a
		// user it created stays locked (useradd's "!") until a run sets it.
		failed = a.setPasswords(ctx, tools, held, done)
	}
	if ran || recorded {
		m.Owned = owned
		if err := errors.Join(a.saveManifest(p.Config.Name, m), a.writeState(retiredPath, retired)); err != nil {
			return err
		}
	}
	if failed != nil || removes {
		return failed
	}
	db, err := accounts.Read(a.opts.Root)
	if err != nil {
		return fmt.Errorf("accounts: %w", err)
	}
	return a.resolveOwners(p, db, true)
}

// setPasswords runs the passwords tools queued, skipping those of objects
// held since, through done: a failure quarantines its object alone, and
// one that is the node's (accounts.ErrNodeFailure) fails the
// configuration and quarantines nobody (done decides both).
func (a *Applier) setPasswords(ctx context.Context, tools *accounts.Runner, held func(accounts.Change) bool, done func(accounts.Change, error) error) error {
	if tools.Queued() == 0 {
		return nil
	}
	if err := fenced(ctx, "setting passwords"); err != nil {
		return err
	}
	var errs []error
	node := false
	for _, res := range tools.Flush(ctx, held) {
		err := done(res.Change, res.Err)
		if errors.Is(err, accounts.ErrNodeFailure) { // one line for the node's failure, not one per account
			if node {
				continue
			}
			node = true
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("setting passwords: %w", err)
	}
	return nil
}

// retiredPath holds the node's retired uids and gids (accounts.Retired),
// in the state directory beside the manifests that say which accounts ccm
// made. They are the node's, not the cluster's: what a retired ID guards
// is the files on this node that the removed account owned, and every node
// that had the account retires its ID in the run that removes it.
const retiredPath = "accounts-retired.json"

// loadRetired reads the retired IDs; none when the file is missing.
func (a *Applier) loadRetired() (accounts.Retired, error) {
	var r accounts.Retired
	if a.state == nil {
		return r, nil
	}
	raw, err := a.state.readFile(retiredPath)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err == nil {
		err = json.Unmarshal(raw, &r)
	}
	if err != nil {
		return r, fmt.Errorf("state %s: %w", a.state.name(retiredPath), err)
	}
	return r, nil
}

// ownedElsewhere reports whether a configuration other than config
// records the account c creates: a creation that failed on it did not land,
// it found another's (oneCreator keeps two in one run apart).
func (a *Applier) ownedElsewhere(config string, c accounts.Change) bool {
	a.loadManifests()
	for name, m := range a.manifests {
		list := m.Users
		if c.Kind == "group" {
			list = m.Groups
		}
		if name != config && slices.Contains(list, c.Name) {
			return true
		}
	}
	return false
}

// allOwned is every account any configuration's manifest says ccm made.
func (a *Applier) allOwned() accounts.Owned {
	a.loadManifests()
	var all accounts.Owned
	for _, name := range slices.Sorted(maps.Keys(a.manifests)) {
		m := a.manifests[name]
		all.Users = append(all.Users, m.Users...)
		all.Groups = append(all.Groups, m.Groups...)
		made := map[string]bool{} // a set: the loop below reads it once per record
		for _, n := range m.Users {
			made["user:"+n] = true
		}
		for _, n := range m.Groups {
			made["group:"+n] = true
		}
		for key, obj := range m.Owned.Objects { // a group made for an object is that object's to join
			if !made[key] {
				continue // an adopted account's record: the configuration that made it says whose it is
			}
			if all.Objects == nil {
				all.Objects = map[string]string{}
			}
			all.Objects[key] = obj
		}
	}
	return all
}
