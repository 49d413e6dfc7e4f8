package accounts_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/accounts"
)

// Each field a customer's object sets is refused, naming the field, for
// every hostile value; the good forms pass.
func TestDeclaredFieldsRefuseHostileValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		user accounts.User
		want string // "" passes
	}{
		{"a sha-512 hash", accounts.User{Name: "c", Password: "$6$salt$abcdefABCDEF0123./"}, ""},
		{"rounds", accounts.User{Name: "c", Password: "$6$rounds=5000$salt$abc"}, ""},
		{"yescrypt", accounts.User{Name: "c", Password: "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"}, ""},
		{"bcrypt", accounts.User{Name: "c", Password: "$2b$10$" + strings.Repeat("a", 53)}, ""},
		{"locked", accounts.User{Name: "c", Password: "!$6$salt$abc"}, ""},
		{"bcrypt cost 31", accounts.User{Name: "c", Password: "$2b$31$" + strings.Repeat("a", 53)}, "password is not a crypt(3) hash"},
		{"rounds 999999999", accounts.User{Name: "c", Password: "$6$rounds=999999999$salt$abc"}, "password is not a crypt(3) hash"},
		{"rounds 2000000", accounts.User{Name: "c", Password: "$6$rounds=2000000$salt$abc"}, "asks for 2000000 rounds"},
		{"yescrypt 1 GB", accounts.User{Name: "c", Password: "$y$jFT$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"}, "password is not a crypt(3) hash"},
		{"a newline in a hash", accounts.User{Name: "c", Password: "$6$abc\nroot:$6$PWNED"}, "password is not a crypt(3) hash"},
		{"a colon in a hash", accounts.User{Name: "c", Password: "$6$abc$x:0:0"}, "password is not a crypt(3) hash"},
		{"a plain password", accounts.User{Name: "c", Password: "hunter2"}, "password is not a crypt(3) hash"},
		{"NUL", accounts.User{Name: "c", Password: "$6$a$b\x00"}, "password is not a crypt(3) hash"},
		{"uid 0", accounts.User{Name: "c", UID: "0"}, "uid 0 is below min_uid 1000"},
		{"uid -1", accounts.User{Name: "c", UID: "-1"}, `uid "-1" is not a decimal number`},
		{"uid nobody", accounts.User{Name: "c", UID: "65534"}, "uid 65534 is in the reserved range"},
		{"uid 2^31", accounts.User{Name: "c", UID: "2147483648"}, "uid 2147483648 is above max_uid"},
		{"uid 2e10", accounts.User{Name: "c", UID: "2e10"}, `not a decimal number`},
		{"uid float", accounts.User{Name: "c", UID: "2001.5"}, `not a decimal number`},
		{"uid +", accounts.User{Name: "c", UID: "+2001"}, `not a decimal number`},
		{"uid above max", accounts.User{Name: "c", UID: "60001"}, "reserved range"},
		{"name with a newline", accounts.User{Name: "c\nroot"}, "is not an account name"},
		{"name with a colon", accounts.User{Name: "c:0"}, "is not an account name"},
		{"name as an option", accounts.User{Name: "-o"}, "is not an account name"},
		{"name homoglyph", accounts.User{Name: "rооt"}, "is not an account name"},
		{"group as an option", accounts.User{Name: "c", Group: "-g0"}, "group"},
		{"home outside /home", accounts.User{Name: "c", Home: "/etc"}, "is not below /home"},
		{"home with ..", accounts.User{Name: "c", Home: "/home/../root"}, "not an absolute, clean path"},
		{"home /home itself", accounts.User{Name: "c", Home: "/home"}, "is not below /home"},
		{"home with a newline", accounts.User{Name: "c", Home: "/home/c\n"}, "control"},
		{"home with a colon", accounts.User{Name: "c", Home: "/home/c:x"}, "colon"},
		{"home bidi", accounts.User{Name: "c", Home: "/home/c\u202e"}, "format character"},
		{"a shell not in etc/shells", accounts.User{Name: "c", Shell: "/tmp/sh"}, "not in the node's etc/shells"},
		{"nologin always", accounts.User{Name: "c", Shell: "/usr/sbin/nologin"}, ""},
		{"comment with a colon", accounts.User{Name: "c", Comment: "a:b"}, "colon"},
		{"comment with a newline", accounts.User{Name: "c", Comment: "a\nb"}, "control"},
		{"huge comment", accounts.User{Name: "c", Comment: strings.Repeat("x", 64<<10)}, "at most 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newRoot(t)
			db, err := accounts.Read(root)
			require.NoError(t, err)
			tc.user.Object = "users/c"
			_, problems := db.Plan(nil, []accounts.User{tc.user}, policy, accounts.State{}, root)
			if tc.want == "" {
				assert.Empty(t, problems)
				return
			}
			require.Len(t, problems, 1)
			assert.Equal(t, "users/c", problems[0].Object, "the object alone is held")
			assert.ErrorContains(t, problems[0].Err, tc.want)
			assert.NotContains(t, problems[0].Err.Error(), "PWNED", "a hash is never echoed")
		})
	}
}

// fileOf reads a file of root's etc.
func fileOf(t *testing.T, root, name string) string {
	raw, err := os.ReadFile(filepath.Join(root, "etc", name))
	require.NoError(t, err)
	return string(raw)
}

// Reproduction 1: a newline in a password hash set root's password through
// chpasswd's second input line.
func TestANewlineInAHashNeverReachesChpasswd(t *testing.T) {
	root := newRoot(t)
	owned := &accounts.Owned{}
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, []accounts.User{{Name: "alice2", UID: "2001", Password: "$6$abc\nroot:$6$PWNED", Object: "users/alice2"}}, policy, accounts.State{Owned: *owned}, root)
	r := &accounts.Runner{} // what a plan would run, with the real tools
	for _, c := range changes {
		_, _ = r.Run(t.Context(), c)
	}
	r.Flush(t.Context(), nil)
	require.Len(t, problems, 1)
	assert.Empty(t, changes)
	assert.Contains(t, fileOf(t, root, "shadow"), "root:*:", "root's hash is untouched")
	assert.NotContains(t, fileOf(t, root, "shadow"), "PWNED")
}

// Reproduction 3: an existing account ccm did not create is refused, not
// adopted, unless the configuration lists it by name.
func TestAnExistingAccountIsNotCcmsUnlessAdopted(t *testing.T) {
	root := newRoot(t)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	users := []accounts.User{{Name: "alice", UID: "1500", Groups: []string{}, Password: "$6$salt$abc", Object: "users/alice"}}
	changes, problems := db.Plan(nil, users, policy, accounts.State{}, root)
	assert.Empty(t, changes)
	require.Len(t, problems, 1)
	assert.ErrorContains(t, problems[0].Err, "user alice: exists and is not ccm's")

	adopting := policy
	adopting.Adopt = []string{"alice"}
	changes, problems = db.Plan(nil, users, adopting, accounts.State{}, root)
	assert.Empty(t, problems)
	assert.NotEmpty(t, changes)
}

// Reproduction 4: the uid of a removed customer is not given to the next
// one, whether declared or picked, until the configuration releases it.
func TestARemovedAccountsIDIsRetired(t *testing.T) {
	root := newRoot(t)
	owned := &accounts.Owned{}
	retired := accounts.Retired{}
	run := func(users []accounts.User, pol accounts.Policy) ([]string, []accounts.Problem) {
		db, err := accounts.Read(root)
		require.NoError(t, err)
		changes, problems := db.Plan(nil, users, pol, accounts.State{Owned: *owned, Retired: retired}, root)
		var lines []string
		runAll(t, changes)
		for _, c := range changes {
			*owned = owned.After(c)
			retired = retired.After(c)
			lines = append(lines, c.Line)
		}
		return lines, problems
	}
	_, problems := run([]accounts.User{{Name: "carol", UID: "3003", Object: "users/carol"}}, policy)
	require.Empty(t, problems)
	lines, _ := run(nil, policy)
	assert.Equal(t, []string{"- user carol", "- group carol"}, lines)
	assert.Equal(t, "carol", retired.UIDs[3003])

	_, problems = run([]accounts.User{{Name: "mallory", UID: "3003", Object: "users/mallory"}}, policy)
	require.Len(t, problems, 1)
	assert.ErrorContains(t, problems[0].Err, "uid 3003 is retired: it was user carol")

	// Picked IDs skip it too: useradd would have handed out 3003 again.
	_, problems = run([]accounts.User{{Name: "mallory", Object: "users/mallory"}}, policy)
	require.Empty(t, problems)
	assert.NotContains(t, fileOf(t, root, "passwd"), ":3003:")
	assert.Contains(t, fileOf(t, root, "passwd"), "mallory:x:3004:3004:")

	released := policy
	released.ReuseUIDs = []int{3003}
	_, problems = run([]accounts.User{{Name: "mallory", UID: "3003", Object: "users/mallory"}, {Name: "dave", UID: "3003", Object: "users/dave"}}, released)
	require.Len(t, problems, 1, "mallory holds 3004 and is changed; dave gets nothing: 3003 is mallory's in this plan")
}

// Reproduction 5: groups from object data are held to the group rule.
func TestADeclaredUserJoinsNoSystemOrDeniedGroup(t *testing.T) {
	root := newRoot(t)
	// A group a customer may reach by name, with a gid that is fine, but
	// on the deny list.
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte(fileOf(t, root, "group")+"sudo:x:27:\nsudo2:x:1700:\n"), 0o644))
	db, err := accounts.Read(root)
	require.NoError(t, err)
	pol := policy
	pol.DenyGroups = append([]string{"sudo2"}, accounts.DefaultDenyGroups...)
	for _, u := range []accounts.User{
		{Name: "m1", Group: "root", Object: "users/m1"},
		{Name: "m2", Groups: []string{"sudo"}, Object: "users/m2"},
		{Name: "m3", Groups: []string{"www-data"}, Object: "users/m3"},
		{Name: "m4", Groups: []string{"sudo2"}, Object: "users/m4"},
	} {
		changes, problems := db.Plan(nil, []accounts.User{u}, pol, accounts.State{}, root)
		assert.Empty(t, changes, u.Name)
		require.Len(t, problems, 1, u.Name)
		assert.Regexp(t, `group (root|sudo|www-data|sudo2) (is denied|\(gid \d+\) is below min_gid)`, problems[0].Err.Error())
	}
}

// Owners from data: never nobody, never below min, never a denied group.
func TestAnOwnerFromDataIsNeverASystemAccount(t *testing.T) {
	for _, tc := range []struct {
		field, name string
		id          int
		want        string
	}{
		{"owner", "root", 0, "below min_uid"},
		{"owner", "nobody", 65534, "reserved range"},
		{"group", "nogroup", 65534, "reserved range"},
		{"group", "sudo", 27, "below min_gid"},
		{"group", "docker", 1200, "is denied"},
		{"owner", "alice", 1500, ""},
	} {
		err := policy.CheckOwner(tc.field, tc.name, tc.id)
		if tc.want == "" {
			assert.NoError(t, err)
			continue
		}
		assert.ErrorContains(t, err, tc.want, fmt.Sprintf("%s %s", tc.field, tc.name))
	}
}

// A picked ID stays below max and out of the reserved range (review
// finding: after uid 59999, ccm ran useradd -u 60000).
func TestAPickedIDStaysInRange(t *testing.T) {
	root := newRoot(t)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	_, problems := db.Plan(nil, []accounts.User{{Name: "a", UID: "59999", Object: "users/a"}, {Name: "b", Object: "users/b"}}, policy, accounts.State{}, root)
	require.Len(t, problems, 1)
	assert.Equal(t, "users/b", problems[0].Object)
	assert.ErrorContains(t, problems[0].Err, "no uid left to give")
}
