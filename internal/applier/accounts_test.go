package applier_test

import (
	"context"
	"encoding/json"
	"io/fs"
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
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
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

// An account the configuration made for itself before ccm recorded for
// whom (a manifest without account_objects) is recorded as the
// configuration's by the next run that declares it, and then no object
// takes it over once the configuration stops declaring it (attack review:
// users/mallory had got backup's password and shell).
func TestAnAccountTheConfigurationMadeIsNoObjectsAfterAnUpgrade(t *testing.T) {
	own := "users:\n  - {name: backup, uid: \"2000\"}\n"
	objs := "  - {name: \"{{ .Object.Data.login }}\", for_each: users, uid: \"{{ .Object.Data.uid }}\", password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"
	f := newFixture(t, map[string]string{"users.yaml": own})
	withEtc(t, f)
	require.NoError(t, f.run().Err)
	toLegacy(t, f)
	require.NoError(t, f.run().Err) // declares backup: records it as the configuration's

	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "users.yaml"), []byte("users:\n"+objs), 0o644))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set
	f.put("users/mallory", `{"login":"backup","uid":2000,"hash":"$6$salt3$evil"}`)
	r := f.run()
	require.Len(t, r.Quarantined, 1)
	assert.Equal(t, "mallory", r.Quarantined[0].ID)
	assert.Contains(t, r.Quarantined[0].Error, "was made by the configuration for itself")
	assert.NotContains(t, f.read("/etc/shadow"), "evil")
	assert.NotContains(t, f.read("/etc/passwd"), "backup:")
}

// Two configurations that create one account in the same run leave it to
// one: an object's creation is refused. Both plans read the same
// etc/passwd; the second useradd failed on the account the first made,
// which "landed", and users/mallory was recorded as its owner beside
// configuration a: her next hash was backup's (attack review 4).
func TestTwoConfigurationsCreatingOneAccountLeaveItToOne(t *testing.T) {
	for _, uid := range []string{`"uid":2000,`, ``} { // a uid read from etc/passwd, or the one both would pick
		f := newFixture(t, map[string]string{
			"a.yaml": "users:\n  - {name: backup, uid: \"2000\"}\n",
			"b.yaml": "users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, uid: '{{ get .Object.Data \"uid\" | default \"\" }}', password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n",
		})
		withEtc(t, f)
		f.put("users/mallory", `{"login":"backup",`+uid+`"hash":""}`)
		r := f.run()
		require.Len(t, r.Quarantined, 1, uid)
		assert.Contains(t, r.Quarantined[0].Error, "backup: configuration a creates it in this run too")
		require.Contains(t, f.read("/etc/passwd"), "backup:x:2000:")
		f.put("users/mallory", `{"login":"backup",`+uid+`"hash":"$6$salt3$evil"}`)
		f.run()
		assert.NotContains(t, f.read("/etc/shadow"), "evil", "users/mallory set the password of configuration a's own account")
		assert.Contains(t, f.read("/etc/passwd"), "backup:x:2000:2000::/home/backup:/bin/bash")
	}
}

// Two configurations that both declare an account as their own in one run:
// the first in the run's order makes it, the second fails naming the
// first, as it would in a later run ("exists and is not ccm's"), and the
// account is recorded once.
func TestTwoConfigurationsOwnAccountGoesToTheFirst(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "users:\n  - {name: backup, uid: \"2000\"}\n",
		"b.yaml": "users:\n  - {name: backup, uid: \"2000\", shell: /bin/sh}\n",
	})
	withEtc(t, f)
	r := f.run()
	require.Error(t, r.Err)
	assert.Contains(t, r.Err.Error(), "configuration b: group backup: configuration a creates it in this run too: an account belongs to one declarer\nuser backup: configuration a creates it in this run too")
	assert.Contains(t, f.read("/etc/passwd"), "backup:x:2000:2000::/home/backup:/bin/bash")
	r = f.run()
	require.Error(t, r.Err)
	assert.Contains(t, r.Err.Error(), "exists and is not ccm's")
}

// toLegacy rewrites f's manifest of users.yaml as a release before
// account_objects wrote it, and starts a new applier that reads it.
func toLegacy(t *testing.T, f *fixture) {
	t.Helper()
	state := filepath.Join(f.tmp, "state")
	var manifest string
	require.NoError(t, filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "users.json" {
			manifest = p
		}
		return err
	}))
	raw, err := os.ReadFile(manifest)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"account_objects":{`)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	delete(m, "account_objects")
	raw, err = json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(manifest, raw, 0o600))
	f.applier = applier.New(applier.Options{Root: f.root, StateDir: state, ConfigDir: f.dir, Node: render.Node{Name: "n1"}})
}

// A legacy account whose object is held on a node (by another node's
// quarantine record, say) is neither handed to the one other object that
// names it nor removed: it changes nothing while any object is held, and
// is recorded in the first run that holds none (attack review 5: mallory's
// object had been recorded as cust11's owner and set its password; with
// cust11's object held and nobody naming the account, it had been removed).
func TestAHeldOwnerDoesNotHandItsLegacyAccountOver(t *testing.T) {
	for _, takeover := range []bool{true, false} {
		f := newFixture(t, map[string]string{"users.yaml": "users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"})
		withEtc(t, f)
		f.put("users/cust11", `{"login":"cust11","hash":"$6$salt1$good"}`)
		require.NoError(t, f.run().Err)
		toLegacy(t, f)
		if takeover {
			f.put("users/mallory", `{"login":"cust11","hash":"$6$salt3$evil"}`)
		}
		held := map[string]int64{"users/cust11": f.revs["users/cust11"]}
		f.applier.Run(context.Background(), runkind.Full, f.set, f.snap().Hold(held), f.applier.SelectAll(f.set))
		assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory set cust11's password")
		assert.Contains(t, f.read("/etc/passwd"), "cust11:", "cust11's account was removed while its object was held")
		if takeover {
			for _, q := range f.run().Quarantined { // cust11 no longer held
				assert.NotContains(t, q.Error, "belongs to object users/mallory", "cust11 is refused its own account from now on")
			}
		}
	}
}

// The configuration's own entry takes over no object's account: the
// configuration fails, naming the object, and the account keeps its
// object. A customer who had taken the name "deploy" first had become the
// operator's deploy, in ops, with the customer's password (attack review
// 5).
func TestTheConfigurationTakesOverNoObjectsAccount(t *testing.T) {
	objs := "  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"
	f := newFixture(t, map[string]string{"users.yaml": "groups:\n  - {name: ops}\nusers:\n" + objs})
	withEtc(t, f)
	f.put("users/mallory", `{"login":"deploy","hash":"$6$salt3$evil"}`)
	require.NoError(t, f.run().Err)
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "users.yaml"), []byte("groups:\n  - {name: ops}\nusers:\n  - {name: deploy, groups: [ops]}\n"+objs), 0o644))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set
	r := f.run()
	require.Error(t, r.Err)
	assert.Contains(t, r.Err.Error(), "user deploy: was made for object users/mallory: the configuration takes over no object's account")
	assert.Empty(t, r.Quarantined, "the object keeps its own account")
	assert.NotRegexp(t, `(?m)^ops:x:\d+:deploy`, f.read("/etc/group"))
}

// A customer's user named like the configuration's group, with it as its
// primary group, makes it nobody's private group: every other customer
// still joins it. Any group named like a user had been taken for that
// user's private group, and every other customer in "web" was quarantined
// (attack review 5).
func TestAUserNamedLikeAConfigurationGroupLocksNobodyOut(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": "groups:\n  - {name: web}\nusers:\n" +
		"  - {name: \"{{ .Object.Data.login }}\", for_each: users, group: '{{ get .Object.Data \"pg\" | default \"\" }}', groups: [web]}\n"})
	withEtc(t, f)
	f.put("users/cust11", `{"login":"cust11"}`)
	require.NoError(t, f.run().Err)
	f.put("users/mallory", `{"login":"web","pg":"web"}`)
	f.run()
	r := f.run()
	for _, q := range r.Quarantined {
		assert.NotEqual(t, "cust11", q.ID, q.Error)
	}
}

// A legacy account's owner held on a node, in a configuration that
// declares users of two types, loses it to no object of the other type
// (attack review 7).
func TestAHeldOwnerOfAnotherTypeKeepsItsLegacyAccount(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": "subscribes: [sites, customers]\nusers:\n" +
		"  - {name: \"{{ .Object.ID }}\", for_each: sites, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n" +
		"  - {name: \"{{ .Object.Data.login }}\", for_each: customers, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"})
	withEtc(t, f)
	f.put("sites/site11", `{"hash":"$6$salt1$good"}`)
	require.NoError(t, f.run().Err)
	toLegacy(t, f)
	held := map[string]int64{"sites/site11": f.revs["sites/site11"]}
	f.put("customers/mallory", `{"login":"site11","hash":"$6$salt3$evil"}`)
	f.applier.Run(context.Background(), runkind.Full, f.set, f.snap().Hold(held), f.applier.SelectAll(f.set))
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory set site11's password while site11 was held")
	for _, q := range f.run().Quarantined { // site11 no longer held
		assert.NotContains(t, q.Error, "belongs to object customers/mallory", "site11 is refused its own account from now on")
	}
	assert.NotContains(t, f.read("/etc/shadow"), "evil")
}

// A legacy account another object named beside its own is contested for
// good: when its customer leaves, the squatter does not get it, and once
// nobody names it, it goes (attack review 7).
func TestAContestedLegacyAccountGoesToNoSquatter(t *testing.T) {
	f := legacyCust11(t)
	f.put("users/mallory", `{"login":"cust11","hash":"$6$salt3$evil"}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Empty(t, r.Quarantined, "contested: frozen, neither quarantined")
	f.del("users/cust11") // cust11 leaves
	require.NoError(t, f.run().Err)
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory's password on the departed customer's account")
	f.del("users/mallory")
	require.NoError(t, f.run().Err)
	assert.NotContains(t, f.read("/etc/passwd"), "cust11:", "named by nobody: removed")
}

// A legacy account whose customer leaves while another object is held
// goes to no object that names it later: its one declarer while held was
// recorded as the candidate, and another is contested (attack review 8:
// a customer kept one object broken, and got the departed customer's
// account, uid and home).
func TestALegacyAccountOfADepartedCustomerGoesToNoLaterDeclarer(t *testing.T) {
	f := legacyCust11(t)
	f.put("users/broken", `{"login":"Not A Name"}`)
	held := map[string]int64{"users/broken": f.revs["users/broken"]} // its quarantine record holds it
	heldRun := func() {
		t.Helper()
		r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap().Hold(held), f.applier.SelectAll(f.set))
		require.NoError(t, r.Err)
	}
	heldRun()
	f.del("users/cust11") // cust11's customer leaves
	heldRun()
	require.Contains(t, f.read("/etc/passwd"), "cust11:", "frozen while an object is held")
	f.del("users/broken")
	f.put("users/mallory", `{"login":"cust11","hash":"$6$salt3$evil"}`)
	require.NoError(t, f.run().Err)
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory got the departed customer's legacy account")
	f.del("users/mallory")
	require.NoError(t, f.run().Err)
	assert.NotContains(t, f.read("/etc/passwd"), "cust11:", "named by nobody: removed")
}

// A contested account that an operator removed (userdel, and groupdel of
// its private group) is made again for the one object that names it
// (attack review 8: it had stayed frozen, and was never made again).
func TestAContestedAccountTheOperatorRemovedIsMadeAgain(t *testing.T) {
	f := legacyCust11(t)
	f.put("users/mallory", `{"login":"cust11","hash":"$6$salt3$evil"}`)
	require.NoError(t, f.run().Err)                        // contested
	for _, tool := range []string{"userdel", "groupdel"} { // the user and its private group
		out, err := exec.Command(tool, "--prefix", f.root, "cust11").CombinedOutput()
		require.NoError(t, err, string(out))
	}
	f.del("users/mallory")
	require.NoError(t, f.run().Err)
	assert.Contains(t, f.read("/etc/shadow"), "cust11:$6$salt1$good", "made again for the object that names it")
	f.put("users/mallory", `{"login":"cust11","hash":"$6$salt3$evil"}`)
	f.run()
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "and it is cust11's now")
}

// A run that saw two objects name a legacy account records it contested,
// even when one of them is left out later in that run: the record had
// been made again from what was left, and the squatter became the
// candidate, then the owner once the customer left (attack review 9).
func TestAContestedAccountStaysContestedWhenItsOwnerIsLeftOut(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": "groups:\n  - {name: \"{{ .Object.Data.team }}\", for_each: users}\n" +
		"users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"})
	withEtc(t, f)
	f.put("users/cust11", `{"login":"cust11","team":"c11a","hash":"$6$salt1$good"}`)
	require.NoError(t, f.run().Err)
	toLegacy(t, f)
	// The upgrade run: cust11 moves to a new team; mallory names cust11,
	// and mallory2 names cust11's new team, so that cust11 is left out.
	f.put("users/cust11", `{"login":"cust11","team":"c11b","hash":"$6$salt1$good"}`)
	f.put("users/mallory", `{"login":"cust11","team":"mteam","hash":"$6$salt3$evil"}`)
	f.put("users/mallory2", `{"login":"m2","team":"c11b","hash":"$6$salt3$x"}`)
	r := f.run()
	require.NoError(t, r.Err)
	require.Len(t, r.Quarantined, 2, "cust11 and mallory2, refused for c11b")
	require.NotContains(t, f.read("/etc/shadow"), "evil", "two objects named cust11 at once: contested")
	f.del("users/cust11") // cust11 leaves
	require.NoError(t, f.run().Err)
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory's password on the departed customer's account")
}

// An adopted account whose own object is held goes to no other object
// that names it: adopt: names are recorded and frozen as accounts ccm made
// before it recorded owners (attack review 10: mallory, alone while
// alice's object was held, set alice's password).
func TestAnAdoptedAccountGoesToNoSquatterWhileItsOwnerIsHeld(t *testing.T) {
	f := newFixture(t, map[string]string{"users.yaml": "adopt: [alice]\nusers:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"})
	withEtc(t, f)
	f.put("users/alice", `{"login":"alice","hash":"$6$salt1$good"}`)
	require.NoError(t, f.run().Err)
	require.Contains(t, f.read("/etc/shadow"), "alice:$6$salt1$good:")
	f.put("users/mallory", `{"login":"alice","hash":"$6$salt3$evil"}`)
	f.run()
	held := map[string]int64{"users/alice": f.revs["users/alice"]}
	f.put("users/mallory", `{"login":"alice","hash":"$6$salt3$evil","x":1}`)
	f.applier.Run(context.Background(), runkind.Full, f.set, f.snap().Hold(held), f.applier.SelectAll(f.set))
	assert.NotContains(t, f.read("/etc/shadow"), "evil", "mallory set alice's password while alice's object was held")
}

// adopt: in one configuration reaches no account another configuration
// recorded for an object (attack review 10).
func TestAdoptGivesNoOtherConfigurationsObjectAccount(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n",
		"b.yaml": "depends_on: [a]\nadopt: [cust11]\nusers:\n  - {name: \"{{ .Object.Data.ftp }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n",
	})
	withEtc(t, f)
	f.put("users/cust11", `{"login":"cust11","ftp":"cust11-ftp","hash":"$6$salt1$good"}`)
	require.NoError(t, f.run().Err)
	f.put("users/mallory", `{"login":"mallory","ftp":"cust11","hash":"$6$salt3$evil"}`)
	r := f.run()
	assert.NotContains(t, f.read("/etc/shadow"), "cust11:$6$salt3$evil", "b's adopt: handed a's users/cust11 account to users/mallory")
	var held []string
	for _, q := range r.Quarantined {
		held = append(held, q.Config+" "+q.Type+"/"+q.ID+": "+q.Error)
	}
	assert.Contains(t, strings.Join(held, "\n"), "b users/mallory: user cust11: was made by another configuration")
}

// A customer's declared uid fails no configuration that gives the same uid
// to a new account of its own in that run: every plan reads the same
// etc/passwd, and the IDs a plan gives are taken for the plans after it
// (attack review 10: "useradd: UID 1501 is not unique" failed a, and the
// flag was raised, from customer data alone).
func TestACustomersDeclaredUIDFailsNoConfiguration(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "depends_on: [b]\nusers:\n  - {name: backup}\n",
		"b.yaml": "users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, uid: \"{{ .Object.Data.uid }}\"}\n",
	})
	withEtc(t, f)
	f.put("users/mallory", `{"login":"mallory","uid":"1501"}`) // alice is 1500: the uid a would pick
	r := f.run()
	require.NoError(t, r.Err)
	assert.Contains(t, f.read("/etc/passwd"), "mallory:x:1501:")
	assert.Contains(t, f.read("/etc/passwd"), "backup:x:1502:")
}

// legacyCust11 is a node with users/cust11's account made by a release
// before ccm recorded for which object (toLegacy).
func legacyCust11(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, map[string]string{"users.yaml": "users:\n  - {name: \"{{ .Object.Data.login }}\", for_each: users, password: \"{{ .Object.Data.hash }}\", shell: /bin/sh}\n"})
	withEtc(t, f)
	f.put("users/cust11", `{"login":"cust11","hash":"$6$salt1$good"}`)
	require.NoError(t, f.run().Err)
	toLegacy(t, f)
	return f
}
