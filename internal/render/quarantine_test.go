package render_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/render"
)

func paths(out *render.Output) []string {
	var p []string
	for _, f := range out.Files {
		p = append(p, f.Path)
	}
	return p
}

func refs(out *render.Output) []string {
	var r []string
	for _, f := range out.Failed {
		r = append(r, f.Ref())
	}
	return r
}

// One customer's bad object is left out, and every other object renders.
func TestABadObjectIsLeftOutAndTheOthersRender(t *testing.T) {
	cfg := loadConfig(t, vhosts)
	snap := snapshot(map[string]string{
		"sites/a":   `{"dir":"sites","name":"a.example"}`,
		"sites/bad": `{"dir":"sites"}`, // no name: its template fails
		"sites/c":   `{"dir":"sites","name":"c.example"}`,
		"sites/raw": `[]`, // not an object at all
	})
	out, err := render.Render(cfg, snap, render.Node{}, t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, []string{"/etc/nginx/sites/a.conf", "/etc/nginx/sites/c.conf"}, paths(out))
	assert.Equal(t, []string{"sites/raw", "sites/bad"}, refs(out))
	assert.Equal(t, int64(5), out.Failed[1].Revision, "the revision that failed is the one quarantined")
	assert.Contains(t, string(out.Files[0].Content), "# 3 sites", "a malformed object is not listed to the others")
	assert.Equal(t, "sites/a", out.Files[0].Object)
}

// A template that fails for every object is the configuration's fault.
func TestATemplateFailingForEveryObjectFailsTheConfiguration(t *testing.T) {
	cfg := loadConfig(t, vhosts)
	snap := snapshot(map[string]string{"sites/a": `{"dir":"sites"}`, "sites/b": `{"dir":"sites"}`})
	_, err := render.Render(cfg, snap, render.Node{}, t.TempDir())
	require.Error(t, err)
	assert.True(t, errors.Is(err, render.ErrEveryObject), err)
	assert.ErrorContains(t, err, `map has no entry for key "name"`)
}

// A held object is left out without being tried, and held only at its
// revision.
func TestAHeldObjectIsNotRenderedUntilItsRevisionChanges(t *testing.T) {
	cfg := loadConfig(t, vhosts)
	snap := snapshot(map[string]string{
		"sites/a": `{"dir":"sites","name":"a.example"}`,
		"sites/b": `{"dir":"sites"}`,
	})
	out, err := render.Render(cfg, snap.Hold(map[string]int64{"sites/b": 5}), render.Node{}, t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, []string{"/etc/nginx/sites/a.conf"}, paths(out))
	assert.Empty(t, out.Failed, "a held object is not tried again")
	assert.True(t, out.Held["sites/b"])
	assert.Contains(t, string(out.Files[0].Content), "# 1 sites")

	out, err = render.Render(cfg, snap.Hold(map[string]int64{"sites/b": 4}), render.Node{}, t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, []string{"sites/b"}, refs(out), "a quarantine of another revision holds nothing")
}

func TestAccountsAndOwnersRenderFromTheObject(t *testing.T) {
	cfg := loadConfig(t, `
groups:
  - {name: web, gid: "3000"}
users:
  - name: "{{ .Object.ID }}"
    for_each: sites
    uid: "{{ .Object.Data.uid }}"
    groups: [web]
    password: "{{ .Object.Data.hash }}"
directories:
  - {path: "/home/{{ .Object.ID }}", for_each: sites, owner: "{{ .Object.ID }}", group: web, mode: "0750"}
`)
	snap := snapshot(map[string]string{
		"sites/cust01": `{"uid":3001,"hash":"$6$s$h"}`,
		"sites/Bad":    `{"uid":3002,"hash":""}`,
		"sites/cust03": `{"uid":"x","hash":""}`,
	})
	out, err := render.Render(cfg, snap, render.Node{}, t.TempDir())
	require.NoError(t, err)
	// Render only renders: every field is parsed once, in
	// accounts.DB.Plan (the typed boundary), which holds back sites/Bad
	// and sites/cust03 (accounts: TestDeclaredFieldsRefuseHostileValues).
	require.Len(t, out.Users, 3)
	u := out.Users[1] // Bad, cust01, cust03
	assert.Equal(t, "cust01", u.Name)
	assert.Equal(t, "3001", u.UID)
	assert.Equal(t, "$6$s$h", u.Password)
	assert.Equal(t, []string{"web"}, u.Groups)
	assert.Equal(t, "3000", out.Groups[0].GID)
	assert.Equal(t, "x", out.Users[2].UID, "untrusted text, not parsed here")
	require.Len(t, out.Directories, 3)
	d := out.Directories[1]
	assert.Equal(t, "cust01", d.Owner)
	assert.Nil(t, d.UID, "resolved once the account exists")
	assert.Empty(t, refs(out))
}
