package accounts_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/accounts"
)

// planFor plans users and groups under root with owned as both the
// configuration's and every configuration's accounts.
func planFor(t *testing.T, root string, groups []accounts.Group, users []accounts.User, pol accounts.Policy, owned accounts.Owned) ([]accounts.Change, []accounts.Problem) {
	t.Helper()
	db, err := accounts.Read(root)
	require.NoError(t, err)
	return db.Plan(groups, users, pol, accounts.State{Owned: owned, AllOwned: owned}, root)
}

// problemsOf maps each refused object to its error.
func problemsOf(problems []accounts.Problem) map[string]string {
	m := map[string]string{}
	for _, p := range problems {
		m[p.Object] = p.Err.Error()
	}
	return m
}

// An adopted account was made for no object. Two objects that name it
// get neither, whichever sorts first: it had gone to the first by ID, so
// users/aaa-mallory set alice's password and alice's own object was the
// one refused (attack review). It is contested then, as an account ccm
// made before it recorded owners is: frozen, and neither object is
// quarantined for it.
func TestAnAdoptedAccountTwoObjectsNameGoesToNeither(t *testing.T) {
	t.Parallel()
	root := newRoot(t) // alice (uid 1500) exists, and ccm did not make her
	pol := policy
	pol.Adopt = []string{"alice"}
	users := []accounts.User{
		{Name: "alice", Password: hashOf(666), Shell: "/bin/sh", Object: "users/aaa-mallory"},
		{Name: "alice", Password: hashOf(1), Object: "users/alice"},
	}
	assert.Equal(t, accounts.Contested, accounts.Owned{}.Declared(nil, users, nil, "alice").Objects["user:alice"])
	changes, problems := planFor(t, root, nil, users, pol, accounts.Owned{})
	assert.Empty(t, problems)
	assert.Empty(t, changes)
	runAll(t, changes)
	assert.NotContains(t, fileOf(t, root, "shadow"), hashOf(666))
}

// The configuration's own account wins over an object that names it,
// wherever its entry is: the object is refused as its own problem, and
// the configuration is not failed for it (which would raise the flag and
// halt the rollout for one customer's data).
func TestTheConfigurationsOwnAccountWinsOverAnObject(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "backup", UID: "2000"}}, owned)
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "backup", Password: hashOf(666), Object: "users/mallory"}, // an entry listed before the configuration's
		{Name: "backup", UID: "2000", Shell: "/bin/sh"},
	}, policy, *owned)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/mallory", problems[0].Object)
	assert.ErrorContains(t, problems[0].Err, "is declared by the configuration itself")
	require.Len(t, changes, 1)
	assert.Equal(t, "~ user backup: shell /bin/bash -> /bin/sh", changes[0].Line)
}

// A group named after another object's new user (its private group) is
// refused: mallory's group "bob" had become bob's primary group, with
// mallory in it and mallory's object recorded as its owner.
func TestAnotherObjectCannotMakeAUsersPrivateGroup(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	groups := []accounts.Group{{Name: "bob", Members: []string{"mallory"}, Object: "users/mallory"}}
	users := []accounts.User{
		{Name: "mallory", UID: "3100", Object: "users/mallory"},
		{Name: "bob", UID: "3200", Object: "users/bob"},
	}
	changes, problems := planFor(t, root, groups, users, policy, *owned)
	got := problemsOf(problems)
	assert.Contains(t, got["users/mallory"], "group bob: is declared by object users/bob too")
	assert.Contains(t, got["users/bob"], "user bob: is declared by object users/mallory too")
	for _, c := range changes {
		assert.NotEqual(t, "bob", c.Name, c.Line)
	}
}

// A user joins no group made for another object: mallory in cust11's
// private group would read cust11's group-readable home.
func TestAUserJoinsNoOtherObjectsGroup(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Object: "users/cust11"}}, owned)
	changes, problems := planFor(t, root, []accounts.Group{{Name: "web", GID: "3900"}}, []accounts.User{
		{Name: "cust11", UID: "3011", Object: "users/cust11"},
		{Name: "mallory", UID: "3666", Groups: []string{"cust11"}, Object: "users/mallory"},
		{Name: "eve", UID: "3667", Groups: []string{"web"}, Object: "users/eve"},
	}, policy, *owned)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/mallory", problems[0].Object)
	assert.ErrorContains(t, problems[0].Err, "group cust11 belongs to object users/cust11")
	runAll(t, changes)
	assert.Contains(t, fileOf(t, root, "group"), "web:x:3900:eve", "the configuration's group is everyone's to join")
	assert.NotContains(t, fileOf(t, root, "group"), "mallory")
}

// The account of a deleted object goes, even when another object names
// it: a refused declaration keeps nothing alive (it had kept cust11's
// account, and its password, after cust11's object was deleted).
func TestARefusedDeclarationKeepsNoAccount(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Password: hashOf(1), Object: "users/cust11"}}, owned)
	changes, problems := planFor(t, root, nil, []accounts.User{{Name: "cust11", Object: "users/mallory"}}, policy, *owned)
	require.Len(t, problems, 1)
	assert.ErrorContains(t, problems[0].Err, "belongs to object users/cust11")
	var lines []string
	for _, c := range changes {
		lines = append(lines, c.Line)
	}
	assert.Equal(t, []string{"- user cust11", "- group cust11"}, lines)
}

// A creation reported failed is ccm's all the same when it landed
// (useradd writes the files, then runs nscd, which may hang): Landed
// finds it by name and planned ID.
func TestACreationThatLandedIsFound(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	changes, problems := planFor(t, root, nil, []accounts.User{{Name: "cust31", UID: "3031", Object: "users/cust31"}}, policy, accounts.Owned{})
	require.Empty(t, problems)
	require.NotEmpty(t, changes)
	create := changes[0]
	db, err := accounts.Read(root)
	require.NoError(t, err)
	assert.False(t, create.Landed(db), "not yet")
	runAll(t, changes)
	db, err = accounts.Read(root)
	require.NoError(t, err)
	assert.True(t, create.Landed(db))
	other := create
	other.ID = 3032
	assert.False(t, other.Landed(db), "another uid is another account")
}

// An account the configuration made for itself is no object's once the
// configuration stops declaring it: it goes, and the object naming it is
// refused. It had passed to users/mallory, password and shell, since no
// object was recorded for it (attack review).
func TestAnAccountTheConfigurationMadeIsNoObjectsOnceItIsNotDeclared(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "backup", UID: "2000"}}, owned)
	assert.Equal(t, accounts.ByConfiguration, owned.Objects["user:backup"])
	assert.Equal(t, accounts.ByConfiguration, owned.Objects["group:backup"])
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "backup", Password: hashOf(666), Shell: "/bin/sh", Object: "users/mallory"},
	}, policy, *owned)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/mallory", problems[0].Object)
	assert.ErrorContains(t, problems[0].Err, "user backup: was made by the configuration for itself")
	runAll(t, changes)
	assert.NotContains(t, fileOf(t, root, "shadow"), hashOf(666))
	assert.NotContains(t, passwd(t, root), "backup:", "no longer declared: removed")
}

// An account made before ccm recorded for whom is recorded as its one
// declarer's (Owned.Declared): the configuration's, or the one object that
// names it while no object is held (a held object renders nothing, and the
// account may be its own). Two objects make it contested, for good; a
// recorded entry stays, and so does an account o does not own.
func TestDeclaredRecordsTheOneDeclarer(t *testing.T) {
	t.Parallel()
	legacy := accounts.Owned{Users: []string{"backup", "cust11", "cust12"}, Groups: []string{"backup", "cust11", "ops"}}
	groups := []accounts.Group{{Name: "ops"}, {Name: "other"}}
	users := []accounts.User{
		{Name: "backup"}, {Name: "cust11", Object: "users/cust11"}, {Name: "alice"},
		{Name: "cust12", Object: "users/cust12"}, {Name: "cust12", Object: "users/mallory"},
	}
	assert.Equal(t, map[string]string{"user:backup": "-", "group:backup": "-", "group:ops": "-", "user:cust12": accounts.Contested,
		"user:cust11": "~users/cust11", "group:cust11": "~users/cust11"},
		legacy.Declared(groups, users, map[string]bool{"sites/other": true}).Objects, "an object held: the one declarer is only the candidate")
	cand := legacy.Declared(groups, users, map[string]bool{"sites/other": true})
	assert.Equal(t, "users/cust11", cand.Declared(groups, users, nil).Objects["user:cust11"], "the candidate, alone, with none held")
	assert.Equal(t, accounts.Contested, cand.Declared(nil, []accounts.User{{Name: "cust11", Object: "users/mallory"}}, nil).Objects["user:cust11"],
		"another than the candidate, alone")
	assert.Equal(t, map[string]string{"user:backup": "-", "group:backup": "-", "group:ops": "-", "user:cust12": accounts.Contested,
		"user:cust11": "users/cust11", "group:cust11": "users/cust11"}, legacy.Declared(groups, users, nil).Objects)
	contested := accounts.Owned{Users: []string{"cust12"}, Objects: map[string]string{"user:cust12": accounts.Contested}}
	assert.Equal(t, accounts.Contested, contested.Declared(nil, []accounts.User{{Name: "cust12", Object: "users/mallory"}}, nil).Objects["user:cust12"],
		"a contested account stays so, whoever names it alone later")
	assert.Nil(t, legacy.Objects, "o itself is not changed")
	mine := accounts.Owned{Users: []string{"backup"}, Objects: map[string]string{"user:backup": "users/x"}}
	assert.Equal(t, "users/x", mine.Declared(nil, []accounts.User{{Name: "backup", Group: "staff"}}, nil).Objects["user:backup"], "a recorded object stays")
}

// legacy is o as a manifest written before ccm recorded for whom each
// account was made.
func legacy(o accounts.Owned) accounts.Owned {
	o.Objects = nil
	return o
}

// An account made for an object before ccm recorded it, that another
// object names, is frozen: neither object changes it or is quarantined for
// it, and it is not removed. It had been removed with userdel, and its uid
// retired, by any object naming it (attack review 4); then both objects
// were quarantined for as long as the second named it (attack review 6).
func TestALegacyAccountTwoObjectsNameStays(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Password: hashOf(1), Object: "users/cust11"}}, owned)
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "cust11", UID: "3011", Password: hashOf(1), Object: "users/cust11"},
		{Name: "cust11", Password: hashOf(666), Object: "users/mallory"},
	}, policy, legacy(*owned))
	assert.Empty(t, problems)
	assert.Empty(t, changes)
	runAll(t, changes)
	assert.Contains(t, passwd(t, root), "cust11:", "users/cust11 still names it: it stays")
	assert.NotContains(t, fileOf(t, root, "shadow"), hashOf(666))
}

// A legacy account whose one declarer names it is that object's from the
// plan on: a user of another object joins no private group of it.
func TestALegacyPrivateGroupIsNoOtherObjectsToJoin(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Object: "users/cust11"}}, owned)
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "cust11", UID: "3011", Object: "users/cust11"},
		{Name: "mallory", UID: "3666", Groups: []string{"cust11"}, Object: "users/mallory"},
	}, policy, legacy(*owned))
	require.Len(t, problems, 1)
	assert.Equal(t, "users/mallory", problems[0].Object)
	runAll(t, changes)
	assert.NotContains(t, fileOf(t, root, "group"), "cust11:x:3011:mallory")
}

// The private group of the configuration's own user is not everyone's to
// join, as the configuration's declared groups are: an object's user in
// backup's group would read backup's group-readable files (attack review
// 4).
func TestAConfigurationUsersPrivateGroupIsNoObjectsToJoin(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "backup", UID: "2000"}}, owned)
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "backup", UID: "2000"},
		{Name: "mallory", UID: "3666", Groups: []string{"backup"}, Object: "users/mallory"},
	}, policy, *owned)
	require.Len(t, problems, 1)
	assert.ErrorContains(t, problems[0].Err, "group backup is user backup's private group")
	runAll(t, changes)
	assert.NotContains(t, fileOf(t, root, "group"), "backup:x:2000:mallory")
}

// A user whose private group's name another object took stays while its
// own object names it: refused, not removed (attack review 4, low).
func TestASquattedPrivateGroupNameDoesNotRemoveTheUser(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	web := []accounts.Group{{Name: "web", GID: "3900"}}
	apply(t, root, web, []accounts.User{{Name: "bob", UID: "3200", Group: "web", Object: "users/bob"}}, owned)
	apply(t, root, append(web, accounts.Group{Name: "bob", GID: "3901", Object: "users/mallory"}),
		[]accounts.User{{Name: "bob", UID: "3200", Group: "web", Object: "users/bob"}}, owned)
	changes, problems := planFor(t, root, append(web, accounts.Group{Name: "bob", GID: "3901", Object: "users/mallory"}),
		[]accounts.User{{Name: "bob", UID: "3200", Object: "users/bob"}}, policy, *owned)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/bob", problems[0].Object)
	runAll(t, changes)
	assert.Contains(t, passwd(t, root), "bob:", "users/bob still names it: it stays")
}

// A group of an object lists only its own object's users, the
// configuration's and adopted ones: its members join it as surely as a
// user naming it in groups: does. It had set any typed name with
// groupmod -U (attack review).
func TestAnObjectsGroupListsOnlyItsOwnUsers(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Object: "users/cust11"}, {Name: "backup", UID: "2000"}}, owned)
	groups := []accounts.Group{
		{Name: "mgrp", GID: "3900", Members: []string{"mallory", "cust11", "root", "www-data", "alice", "nosuch"}, Object: "users/mallory"},
		{Name: "ogrp", GID: "3901", Members: []string{"mallory", "backup"}, Object: "users/mallory"},
		{Name: "web", GID: "3902", Members: []string{"cust11", "www-data"}}, // the configuration's own: whom the operator wrote
	}
	users := []accounts.User{{Name: "cust11", UID: "3011", Object: "users/cust11"}, {Name: "backup", UID: "2000"}, {Name: "mallory", UID: "3666", Object: "users/mallory"}}
	changes, problems := planFor(t, root, groups, users, policy, *owned)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/mallory", problems[0].Object)
	msg := problems[0].Err.Error()
	for _, want := range []string{
		"group mgrp: member cust11 belongs to object users/cust11",
		"member root is a system account (uid 0, below min_uid 1000)",
		"member www-data is a system account (uid 33",
		"member alice is not a user ccm made or declares",
		"member nosuch is not a user ccm made or declares",
	} {
		assert.Contains(t, msg, want)
	}
	assert.NotContains(t, msg, "member mallory")
	var lines []string
	for _, c := range changes {
		lines = append(lines, c.Line)
	}
	assert.Contains(t, lines, "~ group ogrp: members \"\" -> backup,mallory")
	assert.Contains(t, lines, "~ group web: members \"\" -> cust11,www-data")
	assert.NotContains(t, strings.Join(lines, "\n"), "mgrp: members")
}

// No object makes a group named in deny_groups, as a group or as its
// user's private group: on a node without a "wheel", a customer's would be
// root to its members wherever sudoers names %wheel. The configuration
// may.
func TestNoObjectMakesADeniedGroup(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	changes, problems := planFor(t, root, []accounts.Group{
		{Name: "wheel", Members: []string{"mallory"}, Object: "users/mallory"},
		{Name: "docker"},
	}, []accounts.User{
		{Name: "mallory", UID: "3666", Object: "users/mallory"},
		{Name: "lxd", UID: "3667", Object: "users/eve"},
		{Name: "admin", UID: "3668", Object: "users/trudy"}, // Ubuntu's sudoers names %admin, and no such group exists
	}, policy, accounts.Owned{})
	got := problemsOf(problems)
	assert.Contains(t, got["users/mallory"], "group wheel: group wheel is denied (deny_groups)")
	assert.Contains(t, got["users/eve"], "user lxd: group lxd is denied (deny_groups)")
	assert.Contains(t, got["users/trudy"], "user admin: group admin is denied (deny_groups)")
	var lines []string
	for _, c := range changes {
		lines = append(lines, c.Line)
	}
	assert.Contains(t, lines, "+ group docker")
	assert.NotContains(t, strings.Join(lines, "\n"), "wheel")
	assert.NotContains(t, strings.Join(lines, "\n"), "lxd")
}

// A legacy account (made before ccm recorded for which object) changes
// nothing while any object is held, since the held one may be its own: the
// one other object naming it is not recorded as its owner, sets nothing,
// and the account is not removed (attack review 5).
func TestALegacyAccountIsFrozenWhileAnObjectIsHeld(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Password: hashOf(1), Object: "users/cust11"}}, owned)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	held := map[string]bool{"users/cust11": true} // quarantined: not rendered this run
	for _, users := range [][]accounts.User{
		{{Name: "cust11", Password: hashOf(666), Shell: "/bin/sh", Object: "users/mallory"}},
		nil, // nobody names it
	} {
		st := accounts.State{Owned: legacy(*owned), AllOwned: legacy(*owned), Held: held}
		assert.NotEqual(t, "users/mallory", legacy(*owned).Declared(nil, users, held).Objects["user:cust11"], "not recorded while an object is held")
		changes, problems := db.Plan(nil, users, policy, st, root)
		require.Empty(t, problems)
		assert.Empty(t, changes, "no change, and no removal")
	}
}

// A group or user made before ccm recorded for which object is newly
// joined or listed by no object's user: it may be another customer's.
// An object could hold one of its own (or name the group a second time)
// so that the group stayed unrecorded, then put its user in cust11's
// group, list cust11 in its own, or make a user with cust11's group as
// its primary group (attack review 6). A user already in it stays.
func TestALegacyGroupIsNewlyJoinedByNoObject(t *testing.T) {
	t.Parallel()
	for name, held := range map[string]map[string]bool{"an object held": {"users/mallory-broken": true}, "none held": nil} {
		root := newRoot(t)
		owned := &accounts.Owned{}
		groups := []accounts.Group{{Name: "site11", GID: "3900", Members: []string{"cust11"}, Object: "users/cust11"}}
		users := []accounts.User{{Name: "cust11", UID: "3011", Object: "users/cust11"}}
		apply(t, root, groups, users, owned)
		db, err := accounts.Read(root)
		require.NoError(t, err)
		st := accounts.State{Owned: legacy(*owned), AllOwned: legacy(*owned), Held: held}
		changes, problems := db.Plan(
			append(groups, accounts.Group{Name: "site11", Object: "users/mallory-a"}, accounts.Group{Name: "mgrp", GID: "3901", Members: []string{"mallory", "cust11"}, Object: "users/mallory"}),
			append(users, accounts.User{Name: "mallory", UID: "3666", Groups: []string{"site11"}, Object: "users/mallory"}),
			policy, st, root)
		var msgs []string
		for _, p := range problems {
			msgs = append(msgs, p.Err.Error())
		}
		all := strings.Join(msgs, "\n")
		assert.Contains(t, all, "user mallory: group site11 was made before ccm recorded for which object", name)
		assert.Contains(t, all, "group mgrp: member cust11 ", name) // unrecorded, or recorded in this plan as users/cust11's
		runAll(t, changes)
		g := fileOf(t, root, "group")
		assert.NotContains(t, g, "site11:x:3900:cust11,mallory", name)
		assert.NotContains(t, g, "mgrp:x:3901:cust11", name)
		assert.Contains(t, g, "site11:x:3900:cust11", name+": cust11 stays in its own group")
	}
}

// A held object of any type freezes a legacy account: one configuration
// may declare users for_each sites and for_each customers, and the held
// site may be the one the account was made for (attack review 7: review
// 6's narrowing to the declarer's type had handed site11 to
// customers/mallory while sites/site11 was held).
func TestAHeldObjectOfAnyTypeFreezesALegacyAccount(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "site11", UID: "3011", Password: hashOf(1), Object: "sites/site11"}}, owned)
	users := []accounts.User{{Name: "site11", Password: hashOf(666), Object: "customers/mallory"}}
	held := map[string]bool{"sites/site11": true}
	assert.Equal(t, "~customers/mallory", legacy(*owned).Declared(nil, users, held).Objects["user:site11"], "a candidate only")
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, policy, accounts.State{Owned: legacy(*owned), AllOwned: legacy(*owned), Held: held}, root)
	require.Empty(t, problems)
	assert.Empty(t, changes)
}

// A legacy account two objects named at once is contested for good: when
// its own object leaves, the other, now its one declarer, does not get it;
// nobody names it then, so it goes (attack review 7: the squatter had got
// the departed customer's account, uid and home).
func TestAContestedLegacyAccountGoesToNoLaterDeclarer(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3011", Password: hashOf(1), Object: "users/cust11"}}, owned)
	both := []accounts.User{{Name: "cust11", Object: "users/cust11"}, {Name: "cust11", Password: hashOf(666), Object: "users/mallory"}}
	contested := legacy(*owned).Declared(nil, both, nil) // what the run records
	require.Equal(t, accounts.Contested, contested.Objects["user:cust11"])
	changes, problems := planFor(t, root, nil, both[1:], policy, contested) // cust11 left
	assert.Empty(t, problems)
	runAll(t, changes)
	assert.NotContains(t, fileOf(t, root, "shadow"), hashOf(666))
	changes, _ = planFor(t, root, nil, nil, policy, contested)
	runAll(t, changes)
	assert.NotContains(t, passwd(t, root), "cust11:", "named by nobody: removed")
}
