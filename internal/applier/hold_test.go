package applier_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/runkind"
)

// The example's two configurations over users: accounts, then a crontab
// per user, run by cron as that user.
var usersAndCrontabs = map[string]string{
	"unix-users.yaml": `
name: unix-users
subscribes: [users]
users:
  - {name: "{{ .Object.ID }}", for_each: users, uid: "{{ .Object.Data.uid }}"}
`,
	"crontab.yaml": `
name: crontab
subscribes: [users]
depends_on: [unix-users]
files:
  - path: "/etc/cron.d/ccm-{{ .Object.ID }}"
    for_each: users
    content: "* * * * * {{ .Object.ID }} id\n"
`,
}

// Reproduction 2: a user that unix-users refuses (a system account) was
// still rendered into a root crontab by the configuration after it, in
// the same run. A hold is the object's, across the run.
func TestAnObjectOneConfigurationHoldsIsHeldByEveryOther(t *testing.T) {
	f := newFixture(t, usersAndCrontabs)
	withEtc(t, f)
	f.put("users/root", `{"uid":0}`)
	f.put("users/www-data", `{"uid":3033}`)
	f.put("users/cust01", `{"uid":3001}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"users/root", "users/www-data"}, r.Held)
	assert.NoFileExists(t, f.path("/etc/cron.d/ccm-root"), "no cron file for a system account")
	assert.NoFileExists(t, f.path("/etc/cron.d/ccm-www-data"))
	assert.FileExists(t, f.path("/etc/cron.d/ccm-cust01"), "the rest converges")
	var configs []string
	for _, q := range r.Quarantined {
		configs = append(configs, q.Config+" "+q.Type+"/"+q.ID)
	}
	assert.Equal(t, []string{"unix-users users/root", "unix-users users/www-data"}, configs, "the configuration that found it records it, once")
}

// A hold found while applying (a check refused the object's file) binds
// the configurations after it in the run, too.
func TestAnObjectACheckRefusesIsHeldByTheConfigurationsAfterIt(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": `
subscribes: [sites]
files:
  - path: "/a/{{ .Object.ID }}"
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
    check: [grep, -qv, bad, "{{ .Staged }}"]
`,
		"b.yaml": `
subscribes: [sites]
depends_on: [a]
files:
  - path: "/b/{{ .Object.ID }}"
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
`,
	})
	f.put("sites/good", `{"v":"ok"}`)
	f.put("sites/evil", `{"v":"bad"}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"sites/evil"}, r.Held)
	assert.FileExists(t, f.path("/b/good"))
	_, err := os.Stat(f.path("/b/evil"))
	assert.ErrorIs(t, err, os.ErrNotExist, "b never wrote what a refused")
}

// Review finding: a run of crontab alone (apply --once --config crontab,
// or a change only crontab subscribes to) wrote the root crontab of a user
// that unix-users refuses. The configurations a run depends on are planned
// for their holds, even when they do not run.
func TestARunWithoutTheAccountConfigurationStillHoldsWhatItRefuses(t *testing.T) {
	f := newFixture(t, usersAndCrontabs)
	withEtc(t, f)
	f.put("users/root", `{"uid":1001}`)
	f.put("users/cust01", `{"uid":3001}`)
	r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"crontab"})
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"users/root"}, r.Held)
	assert.NoFileExists(t, f.path("/etc/cron.d/ccm-root"))
}

// A configuration that already wrote an object in this run is rolled back
// for that object when a later configuration's check refuses it: the
// object is held across the whole run, at its last good version.
func TestAnEarlierConfigurationIsRolledBackForAnObjectALaterOneRefuses(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": `
subscribes: [sites]
files:
  - {path: "/a/{{ .Object.ID }}", for_each: sites, content: "{{ .Object.Data.v }}\n"}
on_change:
  - [sh, -c, "echo x >> ../on_change_a"]
`,
		"b.yaml": `
subscribes: [sites]
depends_on: [a]
files:
  - path: "/b/{{ .Object.ID }}"
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
    check: [grep, -qv, bad, "{{ .Staged }}"]
`,
	})
	f.put("sites/x", `{"v":"v1"}`)
	f.put("sites/y", `{"v":"v1"}`)
	require.NoError(t, f.run().Err)
	f.put("sites/x", `{"v":"bad"}`)
	f.put("sites/y", `{"v":"v2"}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"sites/x"}, r.Held)
	assert.Equal(t, "v1\n", f.read("/a/x"), "a is rolled back for x")
	assert.Equal(t, "v2\n", f.read("/a/y"), "and only for x")
	assert.Equal(t, "v1\n", f.read("/b/x"))
}
