package accounts

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Op is what a change does to an account.
type Op string

// The ops of a Change.
const (
	Create Op = "create"
	Modify Op = "modify"
	Remove Op = "remove"
)

// Step is one command of a change: an argv with no shell. Nothing secret
// is ever in one: a password hash reaches chpasswd on its standard input,
// through Runner.Flush.
type Step struct {
	Argv []string
	// Gone is the exit status with which the tool says the account is
	// already gone (a private group userdel took with its user): not a
	// failure.
	Gone int
}

// Change is one account that converging creates, changes or removes.
type Change struct {
	Kind   string // "user" or "group"
	Name   string
	Op     Op
	Line   string // as ccm plan shows it; never a password
	Steps  []Step
	Object string // the for_each object that declared it, "" for none
	// Private marks a group useradd made for its user: it is owned, and
	// may be gone once its user is.
	Private bool
	// ID is the uid or gid a creation gives, or a removal retires (-1:
	// none); PrivateGID that of the private group useradd makes.
	ID, PrivateGID int
	// hash is the password a change sets (it has no Steps then): only
	// Plan sets it, from a parsed Hash, and a Runner sets it with every
	// other hash of the run in one chpasswd run under root.
	hash Hash
	root string
}

// setsPassword reports whether c sets a password hash, which a Runner
// queues for its one chpasswd run instead of running c's steps.
func (c Change) setsPassword() bool { return c.hash != "" }

// Landed reports whether creation c, reported failed, is in db all the
// same: useradd writes the account files, then runs nscd and sss_cache,
// and a run cut off in those has made the account. One that landed is
// ccm's (Owned.After), or no later run would ever change it again.
func (c Change) Landed(db *DB) bool {
	if c.Op != Create || c.ID < 0 {
		return false
	}
	if c.Kind == "user" {
		uid, ok := db.UID(c.Name)
		return ok && uid == c.ID
	}
	gid, ok := db.GID(c.Name)
	return ok && gid == c.ID
}

// Removes reports whether the change removes an account.
func (c Change) Removes() bool { return c.Op == Remove }

// After returns what o is once change c ran: a creation adds the account
// (and a user's private group), a removal takes it out.
func (o Owned) After(c Change) Owned {
	add := func(l []string, n string) []string {
		if slices.Contains(l, n) {
			return l
		}
		return append(slices.Clone(l), n)
	}
	drop := func(l []string, n string) []string {
		return slices.DeleteFunc(slices.Clone(l), func(x string) bool { return x == n })
	}
	object := func(key, obj string) {
		objs := maps.Clone(o.Objects)
		if objs == nil {
			objs = map[string]string{}
		}
		switch {
		case c.Op == Remove:
			delete(objs, key)
		case obj == "":
			objs[key] = ByConfiguration
		default:
			objs[key] = obj
		}
		if len(objs) == 0 {
			objs = nil
		}
		o.Objects = objs
	}
	switch {
	case c.Op == Create && c.Kind == "user":
		o.Users = add(o.Users, c.Name)
		object("user:"+c.Name, c.Object)
		if c.Private {
			o.Groups = add(o.Groups, c.Name)
			object("group:"+c.Name, c.Object)
		}
	case c.Op == Create:
		o.Groups = add(o.Groups, c.Name)
		object("group:"+c.Name, c.Object)
	case c.Op == Remove && c.Kind == "user":
		o.Users = drop(o.Users, c.Name)
		object("user:"+c.Name, "")
	case c.Op == Remove:
		o.Groups = drop(o.Groups, c.Name)
		object("group:"+c.Name, "")
	}
	return o
}

// Retired is the IDs that accounts ccm made held before it removed them,
// with the name that held each: ccm gives none of them again (a file the
// old account owned would be the new one's) until the configuration
// releases it with reuse_uids or reuse_gids.
type Retired struct {
	UIDs map[int]string `json:"uids,omitempty"`
	GIDs map[int]string `json:"gids,omitempty"`
}

// After returns what r is once change c ran: a removal retires the ID, a
// creation of a released ID takes it off.
func (r Retired) After(c Change) Retired {
	m := &r.UIDs
	if c.Kind == "group" {
		m = &r.GIDs
	}
	set := func(m *map[int]string, id int, name string) {
		if *m == nil {
			*m = map[int]string{}
		}
		if name == "" {
			delete(*m, id)
		} else {
			(*m)[id] = name
		}
	}
	switch {
	case c.ID < 0:
	case c.Op == Remove:
		set(m, c.ID, c.Name)
	case c.Op == Create:
		set(m, c.ID, "")
	}
	if c.Op == Create && c.Private && c.PrivateGID >= 0 {
		set(&r.GIDs, c.PrivateGID, "")
	}
	return r
}

// State is what ccm knows of the node's accounts besides etc/passwd and
// etc/group.
type State struct {
	// Owned is what the configuration created: the only accounts it
	// changes without adopt:, and the only ones it removes.
	Owned Owned
	// AllOwned is what every configuration created: the groups a declared
	// user may join (besides those the plan makes and adopt: names).
	AllOwned Owned
	Retired  Retired
	// Held names the objects ("type/id") held back in this run: an account
	// made for one of them is never removed while it is held.
	Held map[string]bool
	// TakenUIDs and TakenGIDs are the IDs the plans of other
	// configurations of this run give, with the name each goes to: every
	// plan reads the same etc/passwd, and two would give one ID.
	TakenUIDs, TakenGIDs map[int]string
}

// Adoptable is the names of adopt that no other configuration made: an
// account another configuration made is that one's, and its object's, so
// adopt: never hands it to an object of this one.
func (st State) Adoptable(adopt []string) []string {
	return slices.DeleteFunc(slices.Clone(adopt), func(name string) bool {
		for _, key := range []string{"user:" + name, "group:" + name} {
			if st.AllOwned.ours(key, nil) && !st.Owned.ours(key, nil) {
				return true
			}
		}
		return false
	})
}

// Problem is a declared account ccm refuses to touch, or cannot create.
type Problem struct {
	Object string // "" when the configuration declared it without for_each
	Err    error
}

// Plan compares the declared groups and users with db and returns the
// changes in the order they must run: groups, users, memberships, then the
// removals of accounts in owned that are no longer declared, users before
// their groups. Every declared field is parsed first (declared.go); a
// declared account that fails a field or breaks a rule is left out and
// named in the problems. root is the --root (the tools run with --prefix
// unless it is /).
//
// The rules: ccm never touches an account below min_uid or min_gid, and
// changes an existing account only if it created it (owned) or the
// configuration adopts it by name. It gives no ID in retired, and picks
// every ID itself (the lowest above all it knows), so that the tools never
// hand out a retired one either.
func (db *DB) Plan(groups []Group, users []User, pol Policy, st State, root string) ([]Change, []Problem) {
	held := st.Held
	// What a run will record (applier) holds for this plan too.
	adopted := st.Adoptable(pol.Adopt)
	owned := st.Owned.Declared(groups, users, held, adopted...)
	pl := planner{db: db, pol: pol, root: root, owned: owned, ccms: st.AllOwned, retired: st.Retired, gids: map[int]string{}, uids: map[int]string{}, newGroups: map[string]int{},
		groupObjects: map[string]string{}, userObjects: map[string]string{}, declaredUsers: map[string]bool{}, configGroups: map[string]bool{}, privateGroups: map[string]bool{}, recorded: map[string]bool{}}
	for _, o := range []Owned{st.AllOwned, owned} {
		for key, obj := range o.Objects {
			if objectOf(obj) != "" || obj == ByConfiguration {
				pl.recorded[key] = true
			}
			if obj = objectOf(obj); obj == "" {
				continue // the configuration's: everyone's to join
			}
			if name, ok := strings.CutPrefix(key, "group:"); ok {
				pl.groupObjects[name] = obj
			} else if name, ok := strings.CutPrefix(key, "user:"); ok {
				pl.userObjects[name] = obj
			}
		}
	}
	maps.Copy(pl.uids, st.TakenUIDs)
	maps.Copy(pl.gids, st.TakenGIDs)
	var out []Change
	var problems []Problem
	fail := func(object, kind, name string, err error) {
		problems = append(problems, Problem{Object: object, Err: fmt.Errorf("%s %s: %w", kind, name, err)})
	}
	claims := accountClaims(groups, users, owned)
	claims.adopted, claims.all = adopted, st.AllOwned
	claims.exists = func(key string) bool {
		kind, name, _ := strings.Cut(key, ":")
		if kind == "group" {
			_, ok := db.groups[name]
			return ok
		}
		_, ok := db.users[name]
		return ok
	}
	declaredG := map[string]bool{}
	var gs []group
	for _, raw := range groups {
		if raw.Object == "" {
			pl.configGroups[raw.Name] = true
		}
	}
	for _, raw := range groups {
		if claims.frozen("group:"+raw.Name, raw.Object, held) {
			declaredG[raw.Name] = true
			continue
		}
		if err := claims.refuse("group:"+raw.Name, raw.Object); err != nil {
			declaredG[raw.Name] = declaredG[raw.Name] || claims.keeps("group:"+raw.Name, raw.Object)
			fail(raw.Object, "group", raw.Name, err)
			continue
		}
		// Declared even when a field fails: a held object's account stays.
		declaredG[raw.Name] = true
		g, err := pol.parseGroup(raw)
		if err != nil {
			fail(raw.Object, "group", raw.Name, err)
			continue
		}
		c, err := pl.group(g)
		if err != nil {
			fail(g.object, "group", string(g.name), err)
			continue
		}
		gs = append(gs, g)
		if c != nil {
			out = append(out, *c)
		}
	}
	declaredU := map[string]bool{}
	for _, raw := range users {
		if claims.frozen("user:"+raw.Name, raw.Object, held) || raw.Group == "" && claims.frozen("group:"+raw.Name, raw.Object, held) {
			declaredU[raw.Name] = true
			declaredG[raw.Name] = declaredG[raw.Name] || raw.Group == ""
			continue
		}
		err := claims.refuse("user:"+raw.Name, raw.Object)
		if err == nil && raw.Group == "" {
			err = claims.refuse("group:"+raw.Name, raw.Object) // its private group
		}
		if err != nil {
			if claims.keeps("user:"+raw.Name, raw.Object) {
				declaredU[raw.Name] = true
				declaredG[raw.Name] = declaredG[raw.Name] || raw.Group == "" && claims.keeps("group:"+raw.Name, raw.Object)
			}
			fail(raw.Object, "user", raw.Name, err)
			continue
		}
		// Declared even when a field fails: a held object's account, and
		// its private group, stay.
		declaredU[raw.Name] = true
		if raw.Group == "" {
			declaredG[raw.Name] = true
		}
		u, err := pol.parseUser(raw, db.shellsFor(pol))
		if err != nil {
			fail(raw.Object, "user", raw.Name, err)
			continue
		}
		cs, err := pl.user(u)
		if err != nil {
			fail(u.object, "user", string(u.name), err)
			continue
		}
		out = append(out, cs...)
	}
	for _, g := range gs {
		c, err := pl.members(g)
		if err != nil {
			fail(g.object, "group", string(g.name), err)
			continue
		}
		if c != nil {
			out = append(out, *c)
		}
	}
	// An account is never removed while the object it was made for is
	// held; one made before ccm recorded for whom, while any object is.
	heldFor := func(key string) bool {
		o, ok := owned.Objects[key]
		if objectOf(o) == "" && o != ByConfiguration {
			return len(held) > 0 // not made for a known object
		}
		return ok && held[o]
	}
	for _, name := range owned.Users {
		if e, ok := db.users[name]; ok && !declaredU[name] && !heldFor("user:"+name) {
			argv := append(pl.tool("userdel"), name)
			if pol.RemoveHome {
				argv = append(pl.tool("userdel"), "-r", name)
			}
			out = append(out, Change{Kind: "user", Name: name, Op: Remove, Line: "- user " + name, Steps: []Step{{Argv: argv}}, ID: e.id, PrivateGID: -1})
		}
	}
	for _, name := range owned.Groups {
		if e, ok := db.groups[name]; ok && !declaredG[name] && !heldFor("group:"+name) {
			out = append(out, Change{Kind: "group", Name: name, Op: Remove, Line: "- group " + name,
				Steps: []Step{{Argv: append(pl.tool("groupdel"), name), Gone: 6}}, ID: e.id, PrivateGID: -1})
		}
	}
	return out, problems
}

// claims is who declares each account of a run ("user:NAME",
// "group:NAME", a user's private group included): the objects ("type/id")
// and "" for the configuration itself. An account belongs to one
// declarer, and a name from object data that another's account has would
// otherwise hand that account (its password, shell, home, groups and
// members) to the second object.
type claims struct {
	by    map[string][]string
	owned Owned
	// all is every configuration's accounts, adopted the names adopt:
	// lists (an adopted account is frozen and recorded as a made one).
	all     Owned
	adopted []string
	// exists reports whether the account key is on disk.
	exists func(key string) bool
}

// accountClaims reads every declaration of a run before any is planned:
// who wins may not depend on the order of the entries or of the objects.
func accountClaims(groups []Group, users []User, owned Owned) claims {
	cl := claims{by: map[string][]string{}, owned: owned, exists: func(string) bool { return true }}
	add := func(key, object string) {
		if !slices.Contains(cl.by[key], object) {
			cl.by[key] = append(cl.by[key], object)
		}
	}
	for _, g := range groups {
		add("group:"+g.Name, g.Object)
	}
	for _, u := range users {
		add("user:"+u.Name, u.Object)
		if u.Group == "" {
			add("group:"+u.Name, u.Object)
		}
	}
	return cl
}

// refuse is why object ("" for the configuration) may not declare the
// account key, nil when it may. The object an account was made for keeps
// it, and the configuration's entry naming it fails (a customer who took
// a name first does not become the operator's account, password and
// all); otherwise the configuration's own declaration wins over any
// object's; an
// account with no such object (adopted, or made before ccm recorded it)
// that two objects name is refused to both, so that neither sort order
// nor a missing owner hands it over.
func (cl claims) refuse(key, object string) error {
	others := slices.DeleteFunc(slices.Clone(cl.by[key]), func(o string) bool { return o == object })
	entry := cl.owned.Objects[key]
	o := objectOf(entry)
	if object != "" && entry == "" && !cl.owned.ours(key, nil) && cl.all.ours(key, nil) { // no entry: the list scans only then
		return errors.New("was made by another configuration: adopt: reaches no account ccm made")
	}
	switch {
	case object == "" && o != "":
		return fmt.Errorf("was made for object %s: the configuration takes over no object's account (it would keep that customer's password); the object's data or the entry must change", o)
	case object == "":
		return nil // the configuration's own: the objects are refused
	case o == object:
		return nil // its own, even against the configuration's entry (which fails)
	case slices.Contains(others, ""):
		return errors.New("is declared by the configuration itself: an account belongs to one declarer")
	case entry == ByConfiguration:
		return errors.New("was made by the configuration for itself: no object takes over an account the configuration made, even once it no longer declares it")
	case o != "" && o != object:
		return fmt.Errorf("belongs to object %s: an account is changed only by the object it was made for", o)
	case o == "" && len(others) > 0:
		return fmt.Errorf("is declared by object %s too, and was made for neither: an account belongs to one object, so neither changes it", strings.Join(others, ", "))
	}
	return nil
}

// mayName refuses a group name that object ("" for the configuration's
// own) may not declare, as a group or as a user's private group: one in
// deny_groups. A customer's "wheel", on a node without one, would be root
// to its members (its user among them) wherever sudoers names %wheel.
func (pl *planner) mayName(group, object string) error {
	if object == "" || !slices.Contains(pl.pol.groupRule().Deny, group) {
		return nil
	}
	return fmt.Errorf("group %s is denied (deny_groups): no object makes a group of that name, nor a user whose private group it would be", group)
}

// keeps reports whether a refused declaration of key by object still
// keeps the account from removal: its own recorded object names it
// (refused for another account's sake, a private group another object
// took).
func (cl claims) keeps(key, object string) bool {
	return cl.owned.Objects[key] == object
}

// frozen reports whether object's declaration of key is kept and changes
// nothing in this run: the account is ccm's, made before ccm recorded for
// which object, and it is contested (two objects named it at once), or
// not recorded yet and either an object is held (it renders nothing, and
// may be the one the account was made for) or two objects name it
// (Owned.Declared records it in a run with one declarer and none held).
// No object then changes it, takes it over or gets it removed, and
// neither object is quarantined for it.
func (cl claims) frozen(key, object string, held map[string]bool) bool {
	if object == "" {
		return false
	}
	// An account with its object recorded, the common case, is settled by
	// a map read: the list scans below would cost O(accounts) each.
	entry, ok := cl.owned.Objects[key]
	if settled(entry, ok) && entry != Contested {
		return false
	}
	if !cl.ownedAccount(key) || !cl.exists(key) {
		return false // gone (an operator's userdel): the one declarer makes it again
	}
	return entry == Contested || len(held) > 0 || len(cl.by[key]) > 1
}

// ownedAccount reports whether the configuration made the account key.
func (cl claims) ownedAccount(key string) bool {
	return cl.owned.ours(key, cl.adopted)
}

type planner struct {
	db      *DB
	pol     Policy
	root    string
	owned   Owned
	ccms    Owned // every configuration's
	retired Retired
	// gids and uids are the IDs this plan gives, newGroups the groups it
	// creates with their gid: a collision within one plan is caught too.
	gids, uids map[int]string
	newGroups  map[string]int
	// groupObjects is the object each group was made for: recorded by any
	// configuration (ccms), or planned in this run; userObjects the same of
	// users, and declaredUsers the users this run declares.
	groupObjects, userObjects map[string]string
	declaredUsers             map[string]bool
	// configGroups are the groups the configuration declares itself,
	// privateGroups the users' private groups this plan makes.
	configGroups, privateGroups map[string]bool
	// recorded is the accounts ("user:NAME", "group:NAME") whose object,
	// or the configuration, any configuration recorded.
	recorded map[string]bool
}

// unrecorded reports whether the account key is ccm's (any
// configuration's) with no record of whom it was made for: it may be a
// customer's, so no object's user newly joins it or lists it.
func (pl *planner) unrecorded(key string) bool {
	if pl.recorded[key] {
		return false
	}
	kind, name, _ := strings.Cut(key, ":")
	for _, o := range []Owned{pl.owned, pl.ccms} {
		list := o.Users
		if kind == "group" {
			list = o.Groups
		}
		if slices.Contains(list, name) {
			return true
		}
	}
	return false
}

// member reports whether user is in group g on disk, as a member or by its
// primary gid.
func (db *DB) member(user string, g Name) bool {
	grp, ok := db.groups[string(g)]
	if !ok {
		return false
	}
	u, ok := db.users[user]
	return slices.Contains(grp.members, user) || ok && u.gid == grp.id
}

// tool is the argv of a shadow-utils tool, under --prefix for a --root.
func (pl *planner) tool(name string) []string {
	if pl.root == "" || pl.root == "/" {
		return []string{name}
	}
	return []string{name, "--prefix", pl.root}
}

// mayChange refuses an existing account that ccm did not create and the
// configuration does not adopt.
func (pl *planner) mayChange(kind string, name Name, owned []string) error {
	if slices.Contains(owned, string(name)) || slices.Contains(pl.pol.Adopt, string(name)) {
		return nil
	}
	return fmt.Errorf("exists and is not ccm's: ccm changes only the accounts it created (an operator may list it in the configuration's adopt:)")
}

func (pl *planner) group(g group) (*Change, error) {
	cur, exists := pl.db.groups[string(g.name)]
	rule := pl.gidRule()
	if err := rule.claim(string(g.name), cur, exists, g.gid); err != nil {
		return nil, err
	}
	if err := pl.mayName(string(g.name), g.object); err != nil {
		return nil, err
	}
	if exists {
		if err := pl.mayChange("group", g.name, pl.owned.Groups); err != nil {
			return nil, err
		}
	}
	if !exists {
		gid, err := rule.pick(g.gid)
		if err != nil {
			return nil, err
		}
		pl.newGroups[string(g.name)] = gid
		pl.groupObjects[string(g.name)] = g.object
		argv := append(pl.tool("groupadd"), "-g", strconv.Itoa(gid))
		line := "+ group " + string(g.name)
		if g.gid != nil {
			line += fmt.Sprintf(" (gid %d)", gid)
		}
		return &Change{Kind: "group", Name: string(g.name), Op: Create, Line: line, Steps: []Step{{Argv: append(argv, string(g.name))}}, Object: g.object, ID: gid, PrivateGID: -1}, nil
	}
	if g.gid == nil || int(*g.gid) == cur.id {
		return nil, nil
	}
	return &Change{Kind: "group", Name: string(g.name), Op: Modify, Line: fmt.Sprintf("~ group %s%s: gid %d -> %d", g.name, adopted(slices.Contains(pl.owned.Groups, string(g.name))), cur.id, *g.gid),
		Steps: []Step{{Argv: append(pl.tool("groupmod"), "-g", strconv.Itoa(int(*g.gid)), string(g.name))}}, Object: g.object, ID: -1, PrivateGID: -1}, nil
}

func (pl *planner) uidRule() idRule {
	return idRule{"system account", "uid", "min_uid", "user", pl.pol.MinUID, pl.pol.maxUID(), pl.uids, pl.db.uidName, pl.retired.UIDs, pl.pol.ReuseUIDs}
}

func (pl *planner) gidRule() idRule {
	return idRule{"system group", "gid", "min_gid", "group", pl.pol.MinGID, pl.pol.maxGID(), pl.gids, pl.db.gidName, pl.retired.GIDs, pl.pol.ReuseGIDs}
}

// idRule is what ccm may do with one kind of account's IDs: nothing below
// min, and no ID another name has, on disk, in this plan or retired.
type idRule struct {
	system, id, limit, kind string
	min, max                int
	planned, disk, retired  map[int]string
	reuse                   []int
}

// claim checks the account name (cur on disk, when exists) and the ID it
// is declared with (nil: any), and records that ID for the rest of the
// plan.
func (r idRule) claim(name string, cur entry, exists bool, want *ID) error {
	if exists && cur.id < r.min {
		return fmt.Errorf("is a %s (%s %d, below %s %d): ccm never touches it", r.system, r.id, cur.id, r.limit, r.min)
	}
	if want == nil {
		return nil
	}
	other, ok := r.planned[int(*want)]
	if !ok {
		other = r.disk[int(*want)]
	}
	if other != "" && other != name {
		return fmt.Errorf("%s %d is already %s %s", r.id, *want, r.kind, other)
	}
	if old, ok := r.retired[int(*want)]; ok && !slices.Contains(r.reuse, int(*want)) && (!exists || cur.id != int(*want)) {
		return fmt.Errorf("%s %d is retired: it was %s %s, which ccm removed; its files may remain (release it with reuse_%ss once they are gone)", r.id, *want, r.kind, old, r.id)
	}
	r.planned[int(*want)] = name
	return nil
}

// free reports whether id is free to give.
func (r idRule) free(id int) bool {
	_, planned := r.planned[id]
	_, disk := r.disk[id]
	_, retired := r.retired[id]
	return !planned && !disk && (!retired || slices.Contains(r.reuse, id))
}

// pick returns want, or the lowest ID above every ID in [min, max] that is
// on disk, planned or retired, and records it; an error when that is past
// max or in the reserved range.
func (r idRule) pick(want *ID) (int, error) {
	if want != nil {
		return int(*want), nil
	}
	next := r.min
	for _, m := range []map[int]string{r.planned, r.disk, r.retired} {
		for id := range m {
			if id >= next && id <= r.max && !(id >= ReservedIDs[0] && id <= ReservedIDs[1]) {
				next = id + 1
			}
		}
	}
	if _, err := checkID(r.id, next, r.min, r.max); err != nil {
		return 0, fmt.Errorf("no %s left to give: %w", r.id, err)
	}
	r.planned[next] = "?"
	return next, nil
}

func adopted(owned bool) string {
	if owned {
		return ""
	}
	return " (adopted)"
}

// mayJoin refuses a group that a declared user (of object, "" for the
// configuration's own) may not join: one that breaks the group rule
// (min_gid, deny_groups), one made for another object (a customer's
// private group: its members read that customer's group-readable files),
// a user's private group to a user of another object (the configuration's
// own users' too), one made before ccm recorded for whom that the user is
// not in already (it may be a customer's), or one that exists and that no
// configuration of ccm's made nor adopt: names (an operator's group).
func (pl *planner) mayJoin(g, user Name, object string) error {
	o := pl.groupObjects[string(g)]
	if object != "" && o != "" && o != object {
		return fmt.Errorf("group %s belongs to object %s: a user joins only the groups of its own object or of the configuration", g, o)
	}
	if object != "" && o == "" && pl.unrecorded("group:"+string(g)) && !pl.db.member(string(user), g) {
		return fmt.Errorf("group %s was made before ccm recorded for which object: a user of an object joins it only once a run has recorded it", g)
	}
	gid, ok := pl.groupID(g)
	if !ok {
		return fmt.Errorf("group %s does not exist and no configuration declares it", g)
	}
	if err := pl.pol.groupRule().Check(string(g), gid); err != nil {
		return err
	}
	if object != "" && pl.privateGroup(g) && pl.userObjects[string(g)] != object {
		return fmt.Errorf("group %s is user %s's private group: a user of an object joins only its own object's", g, g)
	}
	_, planned := pl.newGroups[string(g)]
	if planned || slices.Contains(pl.ccms.Groups, string(g)) || slices.Contains(pl.owned.Groups, string(g)) || slices.Contains(pl.pol.Adopt, string(g)) {
		return nil
	}
	return fmt.Errorf("group %s exists and is not ccm's: a declared user joins only groups ccm made (or adopt: names)", g)
}

// privateGroup reports whether group g is the private group of the user
// of its name: made with it in this plan, or that user's primary group on
// disk. A group the configuration declares itself is everyone's, even when
// a user is named after it and has it as primary group (a customer's user
// "web" in the configuration's "web").
func (pl *planner) privateGroup(g Name) bool {
	if pl.configGroups[string(g)] {
		return false
	}
	if pl.privateGroups[string(g)] {
		return true
	}
	u, isUser := pl.db.users[string(g)]
	grp, isGroup := pl.db.groups[string(g)]
	return isUser && isGroup && u.gid == grp.id
}

// groupID returns the gid of a group on disk or created by this plan.
func (pl *planner) groupID(name Name) (int, bool) {
	if e, ok := pl.db.groups[string(name)]; ok {
		return e.id, true
	}
	id, ok := pl.newGroups[string(name)]
	return id, ok
}

func (pl *planner) user(u user) ([]Change, error) {
	cur, exists := pl.db.users[string(u.name)]
	rule := pl.uidRule()
	if err := rule.claim(string(u.name), cur, exists, u.uid); err != nil {
		return nil, err
	}
	if u.group == "" {
		if err := pl.mayName(string(u.name), u.object); err != nil {
			return nil, err
		}
	}
	if exists {
		if err := pl.mayChange("user", u.name, pl.owned.Users); err != nil {
			return nil, err
		}
	}
	pl.declaredUsers[string(u.name)] = true
	if u.object != "" {
		pl.userObjects[string(u.name)] = u.object
	} else {
		delete(pl.userObjects, string(u.name)) // the configuration's own wins
	}
	joins := append([]Name{u.group}, u.groups...)
	if u.group == "" && !exists && pl.hasGroup(u.name) {
		joins = append(joins, u.name) // useradd would make it the primary group
	}
	for _, g := range joins {
		if g == "" {
			continue
		}
		if err := pl.mayJoin(g, u.name, u.object); err != nil {
			return nil, err
		}
	}
	var out []Change
	if !exists {
		cs, err := pl.createUser(u, rule)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	} else if c := pl.modifyUser(u, cur); c != nil {
		out = append(out, *c)
	}
	if u.password != "" && (!exists || pl.db.hash[string(u.name)] != string(u.password)) {
		what := "set"
		if exists {
			what = "changed"
		}
		out = append(out, Change{Kind: "user", Name: string(u.name), Op: Modify, Line: fmt.Sprintf("~ user %s: password %s", u.name, what), Object: u.object, ID: -1, PrivateGID: -1,
			hash: u.password, root: pl.root})
	}
	return out, nil
}

// createUser makes u with a uid ccm picked (or declared), and its private
// group with the same gid when that is free, or else one ccm picked,
// made first with groupadd.
func (pl *planner) createUser(u user, rule idRule) ([]Change, error) {
	uid, err := rule.pick(u.uid)
	if err != nil {
		return nil, err
	}
	argv := append(pl.tool("useradd"), "-M", "-d", u.home, "-u", strconv.Itoa(uid))
	desc := []string{}
	if u.uid != nil {
		desc = append(desc, fmt.Sprintf("uid %d", uid))
	}
	var out []Change
	group, private, privateGID := string(u.group), false, -1
	switch {
	case group != "":
		argv = append(argv, "-g", group)
	case pl.hasGroup(u.name):
		group = string(u.name)
		argv = append(argv, "-g", group)
	default:
		group = string(u.name)
		grule := pl.gidRule()
		if grule.free(uid) {
			private, privateGID = true, uid
			grule.planned[uid] = group
			argv = append(argv, "-U")
		} else {
			gid, err := grule.pick(nil)
			if err != nil {
				return nil, err
			}
			out = append(out, Change{Kind: "group", Name: group, Op: Create, Line: fmt.Sprintf("+ group %s (gid %d)", group, gid), Object: u.object, ID: gid, PrivateGID: -1,
				Steps: []Step{{Argv: append(pl.tool("groupadd"), "-g", strconv.Itoa(gid), group)}}})
			argv = append(argv, "-g", group)
			pl.newGroups[group] = gid
			pl.groupObjects[group] = u.object
		}
		if private {
			pl.newGroups[group] = uid
			pl.groupObjects[group] = u.object
		}
		pl.privateGroups[group] = true
	}
	desc = append(desc, "group "+group)
	if len(u.groups) > 0 {
		argv = append(argv, "-G", joinNames(u.groups))
		desc = append(desc, "groups "+joinNames(u.groups))
	}
	desc = append(desc, "home "+u.home)
	if u.shell != "" {
		argv = append(argv, "-s", u.shell)
		desc = append(desc, "shell "+u.shell)
	}
	if u.comment != "" {
		argv = append(argv, "-c", u.comment)
	}
	return append(out, Change{Kind: "user", Name: string(u.name), Op: Create, Line: fmt.Sprintf("+ user %s (%s)", u.name, strings.Join(desc, ", ")),
		Steps: []Step{{Argv: append(argv, string(u.name))}}, Object: u.object, Private: private, ID: uid, PrivateGID: privateGID}), nil
}

func (pl *planner) hasGroup(name Name) bool {
	_, ok := pl.groupID(name)
	return ok
}

func joinNames(ns []Name) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = string(n)
	}
	return strings.Join(s, ",")
}

func (pl *planner) modifyUser(u user, cur entry) *Change {
	var flags, diffs []string
	diff := func(flag, what, from, to string) {
		if from != to {
			flags = append(flags, flag, to)
			diffs = append(diffs, fmt.Sprintf("%s %s -> %s", what, orNone(from), orNone(to)))
		}
	}
	if u.uid != nil {
		diff("-u", "uid", strconv.Itoa(cur.id), strconv.Itoa(int(*u.uid)))
	}
	if u.group != "" {
		diff("-g", "group", pl.db.gidName[cur.gid], string(u.group))
	}
	if u.groupsOK {
		want := slices.Sorted(slices.Values(u.groups))
		s := make([]string, len(want))
		for i, n := range want {
			s[i] = string(n)
		}
		diff("-G", "groups", strings.Join(pl.db.memberOf(string(u.name)), ","), strings.Join(s, ","))
	}
	diff("-d", "home", cur.home, u.home)
	if u.shell != "" {
		diff("-s", "shell", cur.shell, u.shell)
	}
	if u.comment != "" {
		diff("-c", "comment", cur.comment, u.comment)
	}
	if len(flags) == 0 {
		return nil
	}
	return &Change{Kind: "user", Name: string(u.name), Op: Modify, Line: fmt.Sprintf("~ user %s%s: %s", u.name, adopted(slices.Contains(pl.owned.Users, string(u.name))), strings.Join(diffs, ", ")),
		Steps: []Step{{Argv: append(append(pl.tool("usermod"), flags...), string(u.name))}}, Object: u.object, ID: -1, PrivateGID: -1}
}

func orNone(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// memberOf lists the groups that name user as a member, sorted.
func (db *DB) memberOf(user string) []string {
	var out []string
	for name, g := range db.groups {
		if slices.Contains(g.members, user) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// members is the change that sets g's members, nil when they are set
// already (or g leaves them alone). Each member of an object's group
// joins it as a user of that object would (mayList).
func (pl *planner) members(g group) (*Change, error) {
	if !g.membersOK {
		return nil, nil
	}
	want := make([]string, len(g.members))
	var errs []error
	for i, n := range g.members {
		want[i] = string(n)
		errs = append(errs, pl.mayList(n, g))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.Sort(want)
	want = slices.Compact(want)
	have := slices.Sorted(slices.Values(pl.db.groups[string(g.name)].members))
	if slices.Equal(want, have) {
		return nil, nil
	}
	return &Change{Kind: "group", Name: string(g.name), Op: Modify, Line: fmt.Sprintf("~ group %s: members %s -> %s", g.name, orNone(strings.Join(have, ",")), orNone(strings.Join(want, ","))),
		Steps: []Step{{Argv: append(pl.tool("groupmod"), "-U", strings.Join(want, ","), string(g.name))}}, Object: g.object, ID: -1, PrivateGID: -1}, nil
}

// mayList refuses a member that the group g of an object may not list:
// a member joins g as surely as a user that names it in groups:, so the
// same rules hold (g's own name passed the group rule in Plan). Each
// member must be a user of g's own object or one ccm made for no
// object, or one adopt: names: never a system account, an operator's
// user, or another object's customer. The configuration's own groups
// (no for_each) list whom the operator wrote.
func (pl *planner) mayList(member Name, g group) error {
	if g.object == "" {
		return nil
	}
	name := string(member)
	o := pl.userObjects[name]
	if o != "" && o != g.object {
		return fmt.Errorf("member %s belongs to object %s: a group of an object lists only users of that object or of the configuration", member, o)
	}
	if o == "" && pl.unrecorded("user:"+name) && !pl.db.member(name, g.name) {
		return fmt.Errorf("member %s was made before ccm recorded for which object: a group of an object lists it only once a run has recorded it", member)
	}
	if e, ok := pl.db.users[name]; ok && e.id < pl.pol.MinUID {
		return fmt.Errorf("member %s is a system account (uid %d, below min_uid %d): an object's group never lists one", member, e.id, pl.pol.MinUID)
	}
	if pl.declaredUsers[name] || slices.Contains(pl.ccms.Users, name) || slices.Contains(pl.owned.Users, name) || slices.Contains(pl.pol.Adopt, name) {
		return nil
	}
	return fmt.Errorf("member %s is not a user ccm made or declares (or adopt: names): an object's group lists only ccm's users", member)
}
