package accounts

import (
	"context"
	"fmt"
	"os/exec"
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

// Step is one command of a change: an argv with no shell, and what it
// reads on its standard input (a password hash never reaches a command
// line).
type Step struct {
	Argv  []string
	Stdin []byte
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
	switch {
	case c.Op == Create && c.Kind == "user":
		o.Users = add(o.Users, c.Name)
		if c.Private {
			o.Groups = add(o.Groups, c.Name)
		}
	case c.Op == Create:
		o.Groups = add(o.Groups, c.Name)
	case c.Op == Remove && c.Kind == "user":
		o.Users = drop(o.Users, c.Name)
	case c.Op == Remove:
		o.Groups = drop(o.Groups, c.Name)
	}
	return o
}

// Problem is a declared account ccm refuses to touch, or cannot create.
type Problem struct {
	Object string // "" when the configuration declared it without for_each
	Err    error
}

// Plan compares the declared groups and users with db and returns the
// changes in the order they must run: groups, users, memberships, then the
// removals of accounts in owned that are no longer declared, users before
// their groups. A declared account that breaks a rule is left out and
// named in the problems. root is the --root (the tools run with --prefix
// unless it is /).
func (db *DB) Plan(groups []Group, users []User, pol Policy, owned Owned, root string) ([]Change, []Problem) {
	pl := planner{db: db, pol: pol, root: root, gids: map[int]string{}, uids: map[int]string{}, newGroups: map[string]bool{}}
	var out []Change
	var problems []Problem
	fail := func(object, kind, name string, err error) {
		problems = append(problems, Problem{Object: object, Err: fmt.Errorf("%s %s: %w", kind, name, err)})
	}
	declaredG := map[string]bool{}
	for _, g := range groups {
		declaredG[g.Name] = true
		c, err := pl.group(g, slices.Contains(owned.Groups, g.Name))
		if err != nil {
			fail(g.Object, "group", g.Name, err)
			continue
		}
		if c != nil {
			out = append(out, *c)
		}
	}
	declaredU := map[string]bool{}
	for _, u := range users {
		declaredU[u.Name] = true
		cs, err := pl.user(u, slices.Contains(owned.Users, u.Name))
		if err != nil {
			fail(u.Object, "user", u.Name, err)
			continue
		}
		out = append(out, cs...)
		if u.Group == "" {
			declaredG[u.Name] = true // its private group
		}
	}
	for _, g := range groups {
		if c := pl.members(g); c != nil {
			out = append(out, *c)
		}
	}
	for _, name := range owned.Users {
		if !declaredU[name] {
			if _, ok := db.users[name]; ok {
				argv := append(pl.tool("userdel"), name)
				if pol.RemoveHome {
					argv = append(pl.tool("userdel"), "-r", name)
				}
				out = append(out, Change{Kind: "user", Name: name, Op: Remove, Line: "- user " + name, Steps: []Step{{Argv: argv}}})
			}
		}
	}
	for _, name := range owned.Groups {
		if !declaredG[name] {
			if _, ok := db.groups[name]; ok {
				out = append(out, Change{Kind: "group", Name: name, Op: Remove, Line: "- group " + name,
					Steps: []Step{{Argv: append(pl.tool("groupdel"), name), Gone: 6}}})
			}
		}
	}
	return out, problems
}

type planner struct {
	db   *DB
	pol  Policy
	root string
	// gids and uids are the IDs this plan gives, newGroups the groups it
	// creates: a collision within one plan is caught too.
	gids, uids map[int]string
	newGroups  map[string]bool
}

// tool is the argv of a shadow-utils tool, under --prefix for a --root.
func (pl *planner) tool(name string) []string {
	if pl.root == "" || pl.root == "/" {
		return []string{name}
	}
	return []string{name, "--prefix", pl.root}
}

func (pl *planner) group(g Group, owned bool) (*Change, error) {
	cur, exists := pl.db.groups[g.Name]
	rule := idRule{"system group", "gid", "min_gid", "group", pl.pol.MinGID, pl.gids, pl.db.gidName}
	if err := rule.claim(g.Name, cur, exists, g.GID); err != nil {
		return nil, err
	}
	if !exists {
		pl.newGroups[g.Name] = true
		argv := pl.tool("groupadd")
		line := "+ group " + g.Name
		if g.GID != nil {
			argv = append(argv, "-g", strconv.Itoa(*g.GID))
			line += fmt.Sprintf(" (gid %d)", *g.GID)
		}
		return &Change{Kind: "group", Name: g.Name, Op: Create, Line: line, Steps: []Step{{Argv: append(argv, g.Name)}}, Object: g.Object}, nil
	}
	if g.GID == nil || *g.GID == cur.id {
		return nil, nil
	}
	return &Change{Kind: "group", Name: g.Name, Op: Modify, Line: fmt.Sprintf("~ group %s%s: gid %d -> %d", g.Name, adopted(owned), cur.id, *g.GID),
		Steps: []Step{{Argv: append(pl.tool("groupmod"), "-g", strconv.Itoa(*g.GID), g.Name)}}, Object: g.Object}, nil
}

// idRule is what ccm may do with one kind of account's IDs: nothing below
// min, and no ID another name has, on disk or in this plan.
type idRule struct {
	system, id, limit, kind string
	min                     int
	planned, disk           map[int]string
}

// claim checks the account name (cur on disk, when exists) and the ID it
// is declared with (nil: any), and records that ID for the rest of the
// plan.
func (r idRule) claim(name string, cur entry, exists bool, want *int) error {
	if exists && cur.id < r.min {
		return fmt.Errorf("is a %s (%s %d, below %s %d): ccm never touches it", r.system, r.id, cur.id, r.limit, r.min)
	}
	if want == nil {
		return nil
	}
	if *want < r.min {
		return fmt.Errorf("%s %d is below %s %d", r.id, *want, r.limit, r.min)
	}
	other, ok := r.planned[*want]
	if !ok {
		other = r.disk[*want]
	}
	if other != "" && other != name {
		return fmt.Errorf("%s %d is already %s %s", r.id, *want, r.kind, other)
	}
	r.planned[*want] = name
	return nil
}

func adopted(owned bool) string {
	if owned {
		return ""
	}
	return " (adopted)"
}

func (pl *planner) hasGroup(name string) bool {
	_, ok := pl.db.groups[name]
	return ok || pl.newGroups[name]
}

func (pl *planner) user(u User, owned bool) ([]Change, error) {
	cur, exists := pl.db.users[u.Name]
	rule := idRule{"system account", "uid", "min_uid", "user", pl.pol.MinUID, pl.uids, pl.db.uidName}
	if err := rule.claim(u.Name, cur, exists, u.UID); err != nil {
		return nil, err
	}
	for _, g := range append([]string{u.Group}, u.Groups...) {
		if g != "" && !pl.hasGroup(g) {
			return nil, fmt.Errorf("group %s does not exist and no configuration declares it", g)
		}
	}
	home := u.Home
	if home == "" {
		home = "/home/" + u.Name
	}
	var out []Change
	if !exists {
		out = append(out, pl.createUser(u, home))
	} else if c := pl.modifyUser(u, cur, home, owned); c != nil {
		out = append(out, *c)
	}
	if u.Password != "" && (!exists || pl.db.hash[u.Name] != u.Password) {
		what := "set"
		if exists {
			what = "changed"
		}
		out = append(out, Change{Kind: "user", Name: u.Name, Op: Modify, Line: fmt.Sprintf("~ user %s: password %s", u.Name, what), Object: u.Object,
			Steps: []Step{{Argv: chpasswd(pl.root), Stdin: []byte(u.Name + ":" + u.Password + "\n")}}})
	}
	return out, nil
}

// chpasswd sets hashed passwords read from its standard input.
func chpasswd(root string) []string {
	if root == "" || root == "/" {
		return []string{"chpasswd", "-e"}
	}
	return []string{"chpasswd", "-e", "--root", root}
}

func (pl *planner) createUser(u User, home string) Change {
	argv := append(pl.tool("useradd"), "-M", "-d", home)
	var desc []string
	if u.UID != nil {
		argv = append(argv, "-u", strconv.Itoa(*u.UID))
		desc = append(desc, fmt.Sprintf("uid %d", *u.UID))
	}
	group, private := u.Group, false
	switch {
	case group != "":
		argv = append(argv, "-g", group)
	case pl.hasGroup(u.Name):
		group = u.Name
		argv = append(argv, "-g", group)
	default:
		group, private = u.Name, true
		argv = append(argv, "-U")
		pl.newGroups[u.Name] = true
	}
	desc = append(desc, "group "+group)
	if len(u.Groups) > 0 {
		argv = append(argv, "-G", strings.Join(u.Groups, ","))
		desc = append(desc, "groups "+strings.Join(u.Groups, ","))
	}
	desc = append(desc, "home "+home)
	if u.Shell != "" {
		argv = append(argv, "-s", u.Shell)
		desc = append(desc, "shell "+u.Shell)
	}
	if u.Comment != "" {
		argv = append(argv, "-c", u.Comment)
	}
	return Change{Kind: "user", Name: u.Name, Op: Create, Line: fmt.Sprintf("+ user %s (%s)", u.Name, strings.Join(desc, ", ")),
		Steps: []Step{{Argv: append(argv, u.Name)}}, Object: u.Object, Private: private}
}

func (pl *planner) modifyUser(u User, cur entry, home string, owned bool) *Change {
	var flags, diffs []string
	diff := func(flag, what, from, to string) {
		if from != to {
			flags = append(flags, flag, to)
			diffs = append(diffs, fmt.Sprintf("%s %s -> %s", what, orNone(from), orNone(to)))
		}
	}
	if u.UID != nil {
		diff("-u", "uid", strconv.Itoa(cur.id), strconv.Itoa(*u.UID))
	}
	if u.Group != "" {
		diff("-g", "group", pl.db.gidName[cur.gid], u.Group)
	}
	if u.Groups != nil {
		want := slices.Sorted(slices.Values(u.Groups))
		diff("-G", "groups", strings.Join(pl.db.memberOf(u.Name), ","), strings.Join(want, ","))
	}
	diff("-d", "home", cur.home, home)
	if u.Shell != "" {
		diff("-s", "shell", cur.shell, u.Shell)
	}
	if u.Comment != "" {
		diff("-c", "comment", cur.comment, u.Comment)
	}
	if len(flags) == 0 {
		return nil
	}
	return &Change{Kind: "user", Name: u.Name, Op: Modify, Line: fmt.Sprintf("~ user %s%s: %s", u.Name, adopted(owned), strings.Join(diffs, ", ")),
		Steps: []Step{{Argv: append(append(pl.tool("usermod"), flags...), u.Name)}}, Object: u.Object}
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

func (pl *planner) members(g Group) *Change {
	if g.Members == nil {
		return nil
	}
	want := slices.Sorted(slices.Values(g.Members))
	have := slices.Sorted(slices.Values(pl.db.groups[g.Name].members))
	if slices.Equal(want, have) {
		return nil
	}
	return &Change{Kind: "group", Name: g.Name, Op: Modify, Line: fmt.Sprintf("~ group %s: members %s -> %s", g.Name, orNone(strings.Join(have, ",")), orNone(strings.Join(want, ","))),
		Steps: []Step{{Argv: append(pl.tool("groupmod"), "-U", strings.Join(want, ","), g.Name)}}, Object: g.Object}
}

// toolEnv is the whole environment of the tools: no secret, and nothing
// of the agent's, reaches them.
var toolEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}

// Run carries out one change, step by step. An error names the change as
// ccm plan shows it, and what the tool said.
func Run(ctx context.Context, c Change) error {
	for _, s := range c.Steps {
		cmd := exec.CommandContext(ctx, s.Argv[0], s.Argv[1:]...)
		cmd.Env = toolEnv
		if s.Stdin != nil {
			cmd.Stdin = strings.NewReader(string(s.Stdin))
		}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok && s.Gone != 0 && ee.ExitCode() == s.Gone {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %s: %w: %s", c.Line, s.Argv[0], err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
