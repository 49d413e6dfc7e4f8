package applier_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
)

// withEtc gives the fixture's root an /etc for the real shadow-utils.
func withEtc(t *testing.T, f *fixture) {
	t.Helper()
	if _, err := exec.LookPath("useradd"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and shadow-utils (Debian's passwd package)")
	}
	etc := f.path("/etc")
	require.NoError(t, os.MkdirAll(etc, 0o755))
	for name, text := range map[string]string{
		"passwd":  "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nalice:x:1500:1500::/home/alice:/bin/bash\n",
		"group":   "root:x:0:\nwww-data:x:33:\nalice:x:1500:\n",
		"shadow":  "root:*:1::::::\nwww-data:*:1::::::\nalice:!:1::::::\n",
		"gshadow": "root:*::\nwww-data:*::\nalice:!::\n",
		"shells":  "/bin/sh\n/bin/bash\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(etc, name), []byte(text), 0o600))
	}
}

const homes = `
subscribes: [sites]
# alice exists and ccm did not make her: only a literal adopt lets ccm
# change her.
adopt: [alice]
users:
  - name: "{{ .Object.ID }}"
    for_each: sites
    uid: "{{ .Object.Data.uid }}"
    shell: "{{ .Object.Data.shell }}"
directories:
  - path: "/home/{{ .Object.ID }}"
    for_each: sites
    owner: "{{ .Object.ID }}"
    group: "{{ .Object.ID }}"
    mode: "0750"
files:
  - path: "/home/{{ .Object.ID }}/.profile"
    for_each: sites
    owner: "{{ .Object.Data.owner }}"
    content: "umask 027\n"
`

func owner(t *testing.T, path string) (uid, gid int) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	s := st.Sys().(*syscall.Stat_t)
	return int(s.Uid), int(s.Gid)
}

// The user exists before its home, the home is the user's, and a deleted
// object's user goes while its home's contents stay.
func TestUsersComeBeforeTheirHomesAndArePruned(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": homes})
	withEtc(t, f)
	f.put("sites/cust01", `{"uid":3001,"shell":"/bin/sh","owner":"cust01"}`)
	f.put("sites/cust02", `{"uid":3002,"shell":"/bin/sh","owner":"cust02"}`)
	f.put("sites/cust03", `{"uid":3003,"shell":"/bin/sh","owner":"nobody-here"}`)
	f.put("sites/root", `{"uid":0,"shell":"/bin/sh","owner":"root"}`)
	f.put("sites/cust04", `{"uid":3004,"shell":"/bin/sh","owner":"www-data"}`)

	p := f.plan("users")
	var lines []string
	for _, c := range p.Accounts {
		lines = append(lines, c.Line)
	}
	assert.Equal(t, []string{
		"+ user cust01 (uid 3001, group cust01, home /home/cust01, shell /bin/sh)",
		"+ user cust02 (uid 3002, group cust02, home /home/cust02, shell /bin/sh)",
	}, lines, "cust03 is held back whole: its .profile's owner does not exist")
	assert.ErrorContains(t, p.Output.Err(), "user root: uid 0 is below min_uid 1000")
	assert.ErrorContains(t, p.Output.Err(), "/home/cust03/.profile: owner nobody-here does not exist on this node and no configuration of this run creates it (object sites/cust03)")
	assert.ErrorContains(t, p.Output.Err(), "/home/cust04/.profile: owner www-data is not one object data may name: uid 33 is below min_uid 1000 (object sites/cust04)")

	var out strings.Builder
	assert.True(t, applier.WritePlans(&out, []*applier.Plan{p}, false))
	assert.Contains(t, out.String(), "+ user cust01 (uid 3001, group cust01, home /home/cust01, shell /bin/sh)\n")
	assert.Contains(t, out.String(), "! sites/cust03 would be quarantined at revision 3 (its files stay as they are): /home/cust03/.profile: owner nobody-here")

	r := f.run()
	require.NoError(t, r.Err)
	uid, gid := owner(t, f.path("/home/cust01"))
	assert.Equal(t, 3001, uid)
	assert.NotZero(t, gid)
	uid, _ = owner(t, f.path("/home/cust02/.profile"))
	assert.Equal(t, 3002, uid)
	assert.NoDirExists(t, f.path("/home/cust03"), "a quarantined object gets nothing, its user included")
	var held []string
	for _, q := range r.Quarantined {
		held = append(held, q.Type+"/"+q.ID)
	}
	assert.Equal(t, []string{"sites/root", "sites/cust03", "sites/cust04"}, held)
	passwd, _ := os.ReadFile(f.path("/etc/passwd"))
	assert.NotContains(t, string(passwd), "cust03")

	f.put("sites/cust01", `{"uid":3001,"shell":"/bin/bash","owner":"cust01"}`)
	f.del("sites/cust02")
	p = f.plan("users")
	lines = nil
	for _, c := range p.Accounts {
		lines = append(lines, c.Line)
	}
	assert.Equal(t, []string{"~ user cust01: shell /bin/sh -> /bin/bash", "- user cust02", "- group cust02"}, lines)
	require.NoError(t, f.run().Err)
	passwd, _ = os.ReadFile(f.path("/etc/passwd"))
	assert.Contains(t, string(passwd), "cust01:x:3001:3001::/home/cust01:/bin/bash")
	assert.NotContains(t, string(passwd), "cust02")
	assert.DirExists(t, f.path("/home/cust02"), "without remove_home a removed user's home stays")
	assert.False(t, strings.Contains(string(passwd), "nobody-here"))

	// An account ccm did not create is adopted, and left when undeclared;
	// a uid taken by another name holds back that object alone.
	f.put("sites/alice", `{"uid":1500,"shell":"/bin/sh","owner":"alice"}`)
	f.put("sites/thief", `{"uid":3001,"shell":"/bin/sh","owner":"thief"}`)
	p = f.plan("users")
	lines = nil
	for _, c := range p.Accounts {
		lines = append(lines, c.Line)
	}
	assert.Equal(t, []string{"~ user alice (adopted): shell /bin/bash -> /bin/sh"}, lines)
	assert.ErrorContains(t, p.Output.Err(), "user thief: uid 3001 is already user cust01")
	require.NoError(t, f.run().Err)
	f.del("sites/alice")
	f.del("sites/thief")
	p = f.plan("users")
	assert.Empty(t, p.Accounts, "an adopted account is never removed")
	require.NoError(t, f.run().Err)
	passwd, _ = os.ReadFile(f.path("/etc/passwd"))
	assert.Contains(t, string(passwd), "alice:x:1500:1500::/home/alice:/bin/sh")
	assert.NotContains(t, string(passwd), "thief")
}

// A configuration deleted from the directory takes the accounts it created
// with it, and only those.
func TestADeletedConfigurationRemovesTheAccountsItCreated(t *testing.T) {
	f := newFixture(t, map[string]string{
		"users.yaml": "adopt: [alice]\nusers:\n  - {name: \"{{ .Object.ID }}\", for_each: sites, uid: \"{{ .Object.Data.uid }}\"}\n  - {name: alice}\n",
		"other.yaml": "files: [{path: /x, content: x}]\n",
	})
	withEtc(t, f)
	f.put("sites/cust01", `{"uid":3001}`)
	require.NoError(t, f.run().Err)
	passwd, _ := os.ReadFile(f.path("/etc/passwd"))
	require.Contains(t, string(passwd), "cust01:x:3001:")

	require.NoError(t, os.Remove(filepath.Join(f.dir, "users.yaml")))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set
	r := f.run()
	require.NoError(t, r.Err)
	passwd, _ = os.ReadFile(f.path("/etc/passwd"))
	assert.NotContains(t, string(passwd), "cust01")
	assert.Contains(t, string(passwd), "alice:x:1500:", "an adopted account stays")
	group, _ := os.ReadFile(f.path("/etc/group"))
	assert.NotContains(t, string(group), "cust01", "its private group goes with it")
}

// A root without account files plans its accounts, and a run says which
// file is missing instead of letting the tools fail one by one.
func TestARootWithoutAccountFilesPlansButDoesNotApply(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": homes})
	require.NoError(t, os.MkdirAll(f.path("/etc"), 0o755))
	require.NoError(t, os.WriteFile(f.path("/etc/shells"), []byte("/bin/sh\n"), 0o644))
	f.put("sites/cust01", `{"uid":3001,"shell":"/bin/sh","owner":"cust01"}`)
	p := f.plan("users")
	require.Len(t, p.Accounts, 1)
	assert.NoError(t, p.Output.Err(), "an owner the plan creates resolves")
	r := f.run()
	require.Error(t, r.Err)
	assert.ErrorContains(t, r.Err, f.path("/etc/passwd"))
	assert.ErrorContains(t, r.Err, "which ccm never creates")
	assert.NoDirExists(t, f.path("/home/cust01"))
}

// A user whose tool fails is held back with its object, and so is every
// object whose files it was to own; the rest converges.
func TestAFailingToolHoldsBackItsUserAndWhatItWouldOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("useradd waits about 15 s for a lock another process holds")
	}
	f := newFixture(t, map[string]string{"c.yaml": `
users:
  - {name: "{{ .Object.ID }}", for_each: users, uid: "{{ .Object.Data.uid }}"}
files:
  - {path: "/srv/{{ .Object.ID }}", for_each: sites, owner: "{{ .Object.Data.user }}", content: x}
  - {path: /srv/index, content: "{{ len .Objects.sites }}"}
`})
	withEtc(t, f)
	f.put("users/carol", `{"uid":3001}`)
	f.put("sites/shop", `{"user":"carol"}`)
	f.put("sites/blog", `{"user":"root"}`)
	// Another process holds the account files' lock: every tool fails.
	require.NoError(t, os.WriteFile(f.path("/etc/passwd.lock"), nil, 0o600))
	r := f.run()
	require.NoError(t, r.Err, "the configuration converges without them")
	var held []string
	for _, q := range r.Quarantined {
		held = append(held, q.Type+"/"+q.ID)
	}
	assert.ElementsMatch(t, []string{"users/carol", "sites/shop", "sites/blog"}, held)
	assert.NoFileExists(t, f.path("/srv/shop"))
	assert.FileExists(t, f.path("/srv/index"))

	require.NoError(t, os.Remove(f.path("/etc/passwd.lock")))
	f.put("users/carol", `{"uid":3001,"v":2}`)
	f.put("sites/shop", `{"user":"carol","v":2}`)
	r = f.run()
	require.NoError(t, r.Err)
	uid, _ := owner(t, f.path("/srv/shop"))
	assert.Equal(t, 3001, uid)
}

// twoUsersWithPasswords is a fixture whose configuration declares a user
// with a password per users object, after a run that made cust01 and
// cust02 with their first hashes.
func twoUsersWithPasswords(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, map[string]string{"users.yaml": `
users:
  - {name: "{{ .Object.ID }}", for_each: users, uid: "{{ .Object.Data.uid }}", password: "{{ .Object.Data.hash }}"}
`})
	withEtc(t, f)
	f.put("users/cust01", `{"uid":3001,"hash":"$6$salt1$first"}`)
	f.put("users/cust02", `{"uid":3002,"hash":"$6$salt2$second"}`)
	require.NoError(t, f.run().Err)
	return f
}

// Every password of a run is set once the users exist (one chpasswd run,
// accounts.Runner), for new users and changed hashes alike.
func TestARunSetsEveryPasswordOnceItsUsersExist(t *testing.T) {
	f := twoUsersWithPasswords(t)
	shadow := func() string {
		raw, err := os.ReadFile(f.path("/etc/shadow"))
		require.NoError(t, err)
		return string(raw)
	}
	assert.Contains(t, shadow(), "cust01:$6$salt1$first:")
	assert.Contains(t, shadow(), "cust02:$6$salt2$second:")

	f.put("users/cust02", `{"uid":3002,"hash":"$6$salt2$changed"}`)
	require.NoError(t, f.run().Err)
	assert.Contains(t, shadow(), "cust02:$6$salt2$changed:")
	assert.Contains(t, shadow(), "cust01:$6$salt1$first:")
}

// A password run that fails for the node, not for a customer (here the
// shadow file's lock is held: chpasswd names no line), fails the
// configuration and quarantines nobody, for one account as for two: a
// quarantine's record would hold the customers of the node on every node.
// It had quarantined each, after a chpasswd run per line.
func TestAPasswordRunThatFailsForTheNodeFailsTheConfiguration(t *testing.T) {
	f := twoUsersWithPasswords(t)

	require.NoError(t, os.WriteFile(f.path("/etc/shadow.lock"), nil, 0o600))
	f.put("users/cust01", `{"uid":3001,"hash":"$6$salt1$changed"}`)
	r := f.run()
	require.Error(t, r.Err, "one account")
	assert.Contains(t, r.Err.Error(), "setting passwords: ")
	assert.ErrorContains(t, r.Err, "cannot lock")
	assert.Empty(t, r.Quarantined, "the node's fault holds no customer")

	f.put("users/cust02", `{"uid":3002,"hash":"$6$salt2$changed"}`)
	r = f.run()
	require.Error(t, r.Err, "two accounts")
	assert.Empty(t, r.Quarantined, "the node's fault holds no customer")

	require.NoError(t, os.Remove(f.path("/etc/shadow.lock")))
	require.NoError(t, f.run().Err)
	raw, err := os.ReadFile(f.path("/etc/shadow"))
	require.NoError(t, err)
	assert.Contains(t, string(raw), "cust01:$6$salt1$changed:")
	assert.Contains(t, string(raw), "cust02:$6$salt2$changed:")
}

// Which object an account was made for survives the runs after it: a
// later run of the configuration had saved its manifest without it, and
// then an object naming cust11 had both objects refused and cust11's
// account removed (attack review).
func TestAnAccountsObjectSurvivesLaterRuns(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": `
users:
  - {name: "{{ .Object.Data.login }}", for_each: users, uid: "{{ .Object.Data.uid }}", password: "{{ .Object.Data.hash }}"}
`})
	withEtc(t, f)
	f.put("users/cust11", `{"login":"cust11","uid":3011,"hash":"$6$salt1$first"}`)
	require.NoError(t, f.run().Err)
	f.put("users/cust12", `{"login":"cust12","uid":3012,"hash":"$6$salt2$first"}`)
	require.NoError(t, f.run().Err)
	f.put("users/mallory", `{"login":"cust11","uid":3011,"hash":"$6$salt3$evil"}`)
	r := f.run()
	var held []string
	for _, q := range r.Quarantined {
		held = append(held, q.Type+"/"+q.ID)
	}
	assert.Equal(t, []string{"users/mallory"}, held, "mallory alone is refused")
	assert.Contains(t, f.read("/etc/passwd"), "cust11:")
	assert.Contains(t, f.read("/etc/shadow"), "cust11:$6$salt1$first:")
}

// A user of another configuration joins no group made for an object
// either: the groups' objects of every configuration are known.
func TestAUserOfAnotherConfigurationJoinsNoObjectsGroup(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "users:\n  - {name: \"{{ .Object.ID }}\", for_each: users, uid: \"{{ .Object.Data.uid }}\"}\n",
		"b.yaml": "depends_on: [a]\nusers:\n  - {name: \"{{ .Object.ID }}\", for_each: members, uid: \"{{ .Object.Data.uid }}\", groups: [\"{{ .Object.Data.g }}\"]}\n"})
	withEtc(t, f)
	f.put("users/cust11", `{"uid":3011}`)
	require.NoError(t, f.run().Err)
	f.put("members/mallory", `{"uid":3666,"g":"cust11"}`)
	f.run()
	assert.NotContains(t, f.read("/etc/group"), "cust11:x:3011:mallory")
}
