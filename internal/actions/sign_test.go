package actions_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/releases"
)

// newKey returns an ed25519 signer and its authorized_keys line body.
func newKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	s, err := ssh.NewSignerFromKey(priv)
	require.NoError(t, err)
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

func writeKeys(t *testing.T, lines ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "authorized_keys")
	require.NoError(t, os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
	return file
}

// signed returns a request signed by s for web1 of binding b, and its raw
// JSON as etcd would hold it.
func signed(t *testing.T, s ssh.Signer, b api.Binding, node, action string) (*api.Request, []byte) {
	t.Helper()
	now := time.Now().UTC()
	req := &api.Request{ID: api.NewID(now), Action: action, Created: now, Deadline: now.Add(time.Hour)}
	require.NoError(t, api.Sign(s, b, node, req))
	raw, err := json.Marshal(req)
	require.NoError(t, err)
	return req, raw
}

// Item 7: authorized_keys options decide what a key may call; an option
// ccm does not read refuses the file, naming the line, instead of being
// ignored.
func TestKeyOptionsAuthoriseActionsNodesAndExpiry(t *testing.T) {
	b := api.NewBinding("", 42)
	ops, opsLine := newKey(t)
	old, oldLine := newKey(t)
	file := writeKeys(t, "# keys", `ccm-actions="site-info,login-url",ccm-nodes="web*" `+opsLine+" ops@example",
		`expiry-time="20200101" `+oldLine+" old@example")
	ak, err := actions.LoadAuthorizedKeys(file)
	require.NoError(t, err)

	req, raw := signed(t, ops, b, "web1", "site-info")
	g, err := ak.Verify(b, "web1", raw, req, time.Now())
	require.NoError(t, err)
	assert.Equal(t, "ops@example", g.Name)
	req, raw = signed(t, ops, b, "web1", "ccm.converge")
	_, err = ak.Verify(b, "web1", raw, req, time.Now())
	assert.ErrorContains(t, err, `the key of ops@example may not call ccm.converge (ccm-actions="site-info,login-url"`)
	req, raw = signed(t, ops, b, "db1", "site-info")
	_, err = ak.Verify(b, "db1", raw, req, time.Now())
	assert.ErrorContains(t, err, `may not call node db1 (ccm-nodes="web*"`)
	req, raw = signed(t, old, b, "web1", "site-info")
	_, err = ak.Verify(b, "web1", raw, req, time.Now())
	assert.ErrorContains(t, err, "the key of old@example expired at 2020-01-01")

	rsaLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(rsaPublic(t)))) + " rsa@example"
	_, err = actions.LoadAuthorizedKeys(writeKeys(t, `restrict,from="10.0.0.1" `+opsLine, `expiry-time="2020" `+oldLine, rsaLine, opsLine))
	require.Error(t, err)
	for _, want := range []string{
		"line 1: option restrict: ccm reads only ccm-actions, ccm-nodes, expiry-time",
		"line 1: option from: ccm reads only",
		`line 2: option expiry-time="2020": want YYYYMMDD`,
		"line 3: a ssh-rsa key; only ssh-ed25519 keys sign requests",
		"line 4: the key of line 1 again",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

// A release key means one thing: a release is signed for every node and
// runs every action it holds, so a key limited to some nodes or actions
// is refused at load, naming its line, rather than trusted everywhere.
func TestAReleaseKeyWithAnOptionThatDoesNotApplyIsRefused(t *testing.T) {
	_, line := newKey(t)
	_, old := newKey(t)
	file := writeKeys(t, `ccm-nodes="web9",ccm-actions="none" `+line+" ci@example", `expiry-time="20990101" `+old+" old@example")
	_, err := actions.LoadReleaseKeys(file)
	require.Error(t, err)
	assert.Contains(t, err.Error(), file+": line 1: option ccm-nodes: ccm reads only expiry-time here")
	assert.Contains(t, err.Error(), file+": line 1: option ccm-actions: ccm reads only expiry-time here")
	assert.NotContains(t, err.Error(), "line 2", "expiry-time applies to a release key")
	_, err = actions.LoadAuthorizedKeys(file)
	assert.NoError(t, err, "as action keys the same lines are limits ccm enforces")
}

// Items 5 and 6: the signature covers every field of the request and the
// cluster it is for.
func TestASignatureCoversEveryFieldAndTheCluster(t *testing.T) {
	s, line := newKey(t)
	ak, err := actions.LoadAuthorizedKeys(writeKeys(t, line+" api"))
	require.NoError(t, err)
	prod := api.NewBinding("/prod", 7)
	req, raw := signed(t, s, prod, "web1", "site-info")
	_, err = ak.Verify(prod, "web1", raw, req, time.Now())
	require.NoError(t, err)
	for name, b := range map[string]api.Binding{"another prefix": api.NewBinding("/staging", 7), "another etcd": api.NewBinding("/prod", 8)} {
		_, err = ak.Verify(b, "web1", raw, req, time.Now())
		assert.ErrorContains(t, err, "does not verify", name)
	}
	var fields map[string]any
	require.NoError(t, json.Unmarshal(raw, &fields))
	for field, v := range map[string]any{"timeout": "1ns", "by": "alice@ops", "extra": true, "params": map[string]string{"a": "b"}} {
		changed := map[string]any{}
		for k, x := range fields {
			changed[k] = x
		}
		changed[field] = v
		b, _ := json.Marshal(changed)
		var r api.Request
		require.NoError(t, json.Unmarshal(b, &r))
		_, err = ak.Verify(prod, "web1", b, &r, time.Now())
		assert.ErrorContains(t, err, "does not verify", field)
	}
}

// Item 8: an RSA key is refused when it is loaded to sign, not first by
// the node.
func TestOnlyEd25519KeysSign(t *testing.T) {
	assert.ErrorContains(t, api.CheckSigningKey(rsaPublic(t)), "only ssh-ed25519 keys sign requests")
}

func rsaPublic(t *testing.T) ssh.PublicKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	pub, err := ssh.NewPublicKey(&k.PublicKey)
	require.NoError(t, err)
	return pub
}

// An option given twice is refused (the last one won, silently); an
// expired release key is reported as expired, not as unknown.
func TestARepeatedOptionIsRefusedAndAnExpiredReleaseKeySaysSo(t *testing.T) {
	_, line := newKey(t)
	file := writeKeys(t, `expiry-time="20990101",expiry-time="20000101" `+line+" ci@example")
	_, err := actions.LoadReleaseKeys(file)
	assert.ErrorContains(t, err, file+": line 1: option expiry-time: given twice")
	_, err = actions.LoadAuthorizedKeys(file)
	assert.ErrorContains(t, err, "option expiry-time: given twice", "action keys too")

	s, line := newKey(t)
	ak, err := actions.LoadReleaseKeys(writeKeys(t, `expiry-time="20000101Z" `+line+" old@example"))
	require.NoError(t, err)
	name, ok := ak.Trusted(s.PublicKey())
	assert.False(t, ok)
	assert.Contains(t, name, "old@example, whose expiry-time 2000-01-01T00:00:00Z")
	r, err := releases.Pack(t.TempDir())
	require.NoError(t, err)
	require.NoError(t, r.Sign(s, "old@example"))
	_, err = r.Verify(ak.Trusted)
	assert.ErrorContains(t, err, "a release key no longer valid")
}
