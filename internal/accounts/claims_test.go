package accounts_test

import (
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

// An adopted account was made for no object. Two objects that name it are
// both refused, whichever sorts first: it had gone to the first by ID, so
// users/aaa-mallory set alice's password and alice's own object was the
// one refused (attack review).
func TestAnAdoptedAccountTwoObjectsNameGoesToNeither(t *testing.T) {
	t.Parallel()
	root := newRoot(t) // alice (uid 1500) exists, and ccm did not make her
	pol := policy
	pol.Adopt = []string{"alice"}
	changes, problems := planFor(t, root, nil, []accounts.User{
		{Name: "alice", Password: hashOf(666), Shell: "/bin/sh", Object: "users/aaa-mallory"},
		{Name: "alice", Password: hashOf(1), Object: "users/alice"},
	}, pol, accounts.Owned{})
	got := problemsOf(problems)
	assert.Contains(t, got["users/aaa-mallory"], "is declared by object users/alice too, and was made for neither")
	assert.Contains(t, got["users/alice"], "is declared by object users/aaa-mallory too")
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
