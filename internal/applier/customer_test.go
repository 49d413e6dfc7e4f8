package applier_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The reproductions of "customer data never reaches root", through a
// whole configuration as the example declares it, with the real
// shadow-utils under the fixture's root.
const customerUsers = `
subscribes: [users]
users:
  - name: "{{ .Object.ID }}"
    for_each: users
    uid: '{{ get .Object.Data "uid" | default "" }}'
    group: '{{ get .Object.Data "pg" | default "" }}'
    groups: ['{{ get .Object.Data "g" | default "customers" }}']
    shell: /bin/bash
    password: '{{ get .Object.Data "password_hash" | default "" }}'
groups:
  - {name: customers, gid: "2000"}
`

func etcFile(t *testing.T, f *fixture, name string) string {
	raw, err := os.ReadFile(f.path("/etc/" + name))
	require.NoError(t, err)
	return string(raw)
}

// 1: a newline in a password hash set root's password.
func TestACustomersHashNeverSetsRootsPassword(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	f.put("users/mal", `{"uid":2001,"password_hash":"$6$abc\nroot:$6$PWNED"}`)
	f.run()
	f.run()
	assert.NotContains(t, etcFile(t, f, "shadow"), "PWNED")
	assert.Contains(t, etcFile(t, f, "shadow"), "root:*:1::::::")
}

// 3: a customer's users/alice with alice's uid took over the operator's
// account ccm never created.
func TestACustomerCannotTakeOverAnAccountCcmDidNotCreate(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	before := etcFile(t, f, "passwd") + etcFile(t, f, "shadow")
	f.put("users/alice", `{"uid":1500,"password_hash":"$6$salt$takeover"}`)
	f.run()
	for _, l := range strings.Split(before, "\n") {
		if strings.HasPrefix(l, "alice:") {
			assert.Contains(t, etcFile(t, f, "passwd")+etcFile(t, f, "shadow"), l, "alice is untouched")
		}
	}
	assert.NotContains(t, etcFile(t, f, "group"), "customers:x:2000:alice")
}

// 4: a deleted customer's uid was handed to the next customer, with the
// home and files the first one left.
func TestADeletedCustomersUIDIsNotHandedOn(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	f.put("users/carol", `{"uid":3003}`)
	require.NoError(t, f.run().Err)
	require.Contains(t, etcFile(t, f, "passwd"), "carol:x:3003:")
	f.del("users/carol")
	require.NoError(t, f.run().Err)
	f.put("users/mallory", `{"uid":3003}`)
	f.run()
	assert.NotContains(t, etcFile(t, f, "passwd"), ":3003:", "3003 stays carol's until an operator releases it")
}

// 5: groups from data gave a customer primary gid 0 and sudo.
func TestACustomerJoinsNoPrivilegedGroup(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	require.NoError(t, os.WriteFile(f.path("/etc/group"), []byte(etcFile(t, f, "group")+"sudo:x:27:\n"), 0o644))
	require.NoError(t, os.WriteFile(f.path("/etc/gshadow"), []byte(etcFile(t, f, "gshadow")+"sudo:*::\n"), 0o600))
	f.put("users/m1", `{"uid":3011,"pg":"root"}`)
	f.put("users/m2", `{"uid":3012,"g":"sudo"}`)
	r := f.run()
	assert.ElementsMatch(t, []string{"users/m1", "users/m2"}, r.Held)
	assert.NotContains(t, etcFile(t, f, "passwd"), "m1:x:3011:0:")
	assert.NotContains(t, etcFile(t, f, "group"), "sudo:x:27:m2")
}

// A user whose object is held (a field fails) keeps its account: a hold
// leaves everything as it was, it never removes (review finding).
func TestAHeldUsersAccountStays(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	f.put("users/cust", `{"uid":3021}`)
	require.NoError(t, f.run().Err)
	f.put("users/cust", `{"uid":3021,"password_hash":"not a hash"}`)
	r := f.run()
	assert.Equal(t, []string{"users/cust"}, r.Held)
	assert.Contains(t, etcFile(t, f, "passwd"), "cust:x:3021:", "still there")
}

// An existing user cannot move to a retired uid (review finding).
func TestAUserCannotMoveToARetiredUID(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	f.put("users/bob", `{"uid":3032}`)
	f.put("users/cust", `{"uid":3031}`)
	require.NoError(t, f.run().Err)
	f.del("users/bob")
	require.NoError(t, f.run().Err)
	f.put("users/cust", `{"uid":3032}`)
	r := f.run()
	assert.Equal(t, []string{"users/cust"}, r.Held)
	assert.Contains(t, etcFile(t, f, "passwd"), "cust:x:3031:")
}

// A user of object data never gets an operator's group as its own, by
// sharing its name (review finding: users/sudo became sudo:x:2011:27).
func TestAUserNeverTakesAnExistingGroupOfItsName(t *testing.T) {
	f := newFixture(t, map[string]string{"u.yaml": customerUsers})
	withEtc(t, f)
	require.NoError(t, os.WriteFile(f.path("/etc/group"), []byte(etcFile(t, f, "group")+"ops:x:1001:\n"), 0o644))
	require.NoError(t, os.WriteFile(f.path("/etc/gshadow"), []byte(etcFile(t, f, "gshadow")+"ops:*::\n"), 0o600))
	f.put("users/ops", `{"uid":3041}`)
	r := f.run()
	assert.Equal(t, []string{"users/ops"}, r.Held)
	assert.NotContains(t, etcFile(t, f, "passwd"), "ops:x:")
}

// An owner of object data is an account ccm made: not the operator's
// own (uid 1500 here, not ccm's), and an existing directory of another
// owner is never handed over (review findings).
func TestAnOwnerOfDataIsCcmsAndTakesNoExistingDirectory(t *testing.T) {
	f := newFixture(t, map[string]string{"d.yaml": `
subscribes: [sites]
depends_on: [u]
directories:
  - {path: "/srv/{{ .Object.ID }}", for_each: sites, owner: "{{ .Object.Data.user }}", mode: "0750"}
`, "u.yaml": customerUsers})
	withEtc(t, f)
	require.NoError(t, os.MkdirAll(f.path("/srv/taken"), 0o700))
	f.put("users/cust", `{"uid":3051}`)
	f.put("sites/op", `{"user":"alice"}`)
	f.put("sites/taken", `{"user":"cust"}`)
	f.put("sites/fine", `{"user":"cust"}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"sites/op", "sites/taken"}, r.Held)
	st, err := os.Stat(f.path("/srv/taken"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "root's directory is untouched")
	assert.DirExists(t, f.path("/srv/fine"))
	assert.NoDirExists(t, f.path("/srv/op"))
}
