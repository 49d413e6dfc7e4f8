package accounts_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/accounts"
)

// newRoot is a root with an /etc for the real tools, holding one system
// account and one human account ccm did not create.
func newRoot(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("useradd"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and shadow-utils (Debian's passwd package)")
	}
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	require.NoError(t, os.MkdirAll(etc, 0o755))
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(etc, name), []byte(text), 0o600))
	}
	write("passwd", "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nalice:x:1500:1500::/home/alice:/bin/bash\n")
	write("group", "root:x:0:\nwww-data:x:33:\nalice:x:1500:\n")
	write("shadow", "root:*:1::::::\nwww-data:*:1::::::\nalice:!:1::::::\n")
	write("gshadow", "root:*::\nwww-data:*::\nalice:!::\n")
	write("shells", "# /etc/shells: valid login shells\n/bin/sh\n/bin/bash\n")
	return root
}

var policy = accounts.Policy{MinUID: 1000, MinGID: 1000}

// apply plans and runs, returning the plan's lines.
func apply(t *testing.T, root string, groups []accounts.Group, users []accounts.User, owned *accounts.Owned) []string {
	t.Helper()
	return applyWith(t, root, groups, users, owned, policy)
}

func applyWith(t *testing.T, root string, groups []accounts.Group, users []accounts.User, owned *accounts.Owned, policy accounts.Policy) []string {
	t.Helper()
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(groups, users, policy, accounts.State{Owned: *owned}, root)
	require.Empty(t, problems)
	var lines []string
	for _, c := range changes {
		lines = append(lines, c.Line)
		*owned = owned.After(c)
	}
	runAll(t, changes)
	return lines
}

// runAll runs changes as the applier does, with one Runner: each in turn,
// then the queued passwords. It requires every one to succeed, and
// returns the Runner (Ran: every tool run's argv).
func runAll(t *testing.T, changes []accounts.Change) *accounts.Runner {
	t.Helper()
	r := &accounts.Runner{}
	for _, c := range changes {
		_, err := r.Run(context.Background(), c)
		require.NoError(t, err)
	}
	for _, res := range r.Flush(context.Background(), nil) {
		require.NoError(t, res.Err)
	}
	return r
}

func passwd(t *testing.T, root string) string {
	raw, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	require.NoError(t, err)
	return string(raw)
}

func TestAccountsAreCreatedChangedAndPrunedWithTheRealTools(t *testing.T) {
	root := newRoot(t)
	owned := &accounts.Owned{}
	hash := "$6$salt$secrethash"
	groups := []accounts.Group{{Name: "web", GID: "3000"}}
	users := []accounts.User{
		{Name: "cust01", UID: "3001", Groups: []string{"web"}, Shell: "/bin/sh", Password: hash},
		{Name: "cust02", UID: "3002", Group: "web"},
	}
	lines := apply(t, root, groups, users, owned)
	assert.Equal(t, []string{
		"+ group web (gid 3000)",
		"+ user cust01 (uid 3001, group cust01, groups web, home /home/cust01, shell /bin/sh)",
		"~ user cust01: password set",
		"+ user cust02 (uid 3002, group web, home /home/cust02)",
	}, lines)
	for _, l := range lines {
		assert.NotContains(t, l, "secrethash", "a password is never printed")
	}
	assert.Contains(t, passwd(t, root), "cust01:x:3001:")
	shadow, _ := os.ReadFile(filepath.Join(root, "etc/shadow"))
	assert.Contains(t, string(shadow), "cust01:"+hash+":")
	assert.Empty(t, apply(t, root, groups, users, owned), "a second run changes nothing")

	users[0].Shell = "/bin/bash"
	assert.Equal(t, []string{"~ user cust01: shell /bin/sh -> /bin/bash"}, apply(t, root, groups, users, owned))

	// Adopt alice: changed, but never removed.
	users = append(users[:1], accounts.User{Name: "alice", Shell: "/bin/sh"})
	policy := policy
	policy.Adopt = []string{"alice"}
	lines = applyWith(t, root, groups, users, owned, policy)
	assert.Equal(t, []string{"~ user alice (adopted): shell /bin/bash -> /bin/sh", "- user cust02"}, lines)
	lines = apply(t, root, nil, nil, owned)
	assert.Equal(t, []string{"- user cust01", "- group web", "- group cust01"}, lines)
	assert.Contains(t, passwd(t, root), "alice:x:1500:", "an adopted account stays")
	assert.NotContains(t, passwd(t, root), "cust0")
}

func TestAccountsRefuseSystemAccountsAndCollisions(t *testing.T) {
	root := newRoot(t)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	_, problems := db.Plan(
		[]accounts.Group{{Name: "www-data"}, {Name: "low", GID: "100"}, {Name: "dup", GID: "1500"}},
		[]accounts.User{
			{Name: "www-data", Group: "www-data", Shell: "/bin/bash", Object: "sites/a"},
			{Name: "thief", UID: "1500", Object: "sites/b"},
			{Name: "low", UID: "999"},
			{Name: "x", UID: "4000"}, {Name: "y", UID: "4000"},
		}, policy, accounts.State{}, root)
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Object+" "+p.Err.Error())
	}
	assert.Equal(t, []string{
		" group www-data: is a system group (gid 33, below min_gid 1000): ccm never touches it",
		" group low: gid 100 is below min_gid 1000",
		" group dup: gid 1500 is already group alice",
		"sites/a user www-data: is a system account (uid 33, below min_uid 1000): ccm never touches it",
		"sites/b user thief: uid 1500 is already user alice",
		" user low: uid 999 is below min_uid 1000",
		" user y: uid 4000 is already user x",
	}, msgs)
}
