package api_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
)

// The worked example of docs/REFERENCE.md ("Signed requests"), byte for
// byte: Go's HTML escaping and member order do not reach the payload.
func TestTheSignedPayloadIsTheReferencesWorkedExample(t *testing.T) {
	raw := `{"id":"20261123T153010.123456Z-1a2b3c4d","action":"site-info","params":{"site":"shop"},"by":"alice@ops1",` +
		`"created":"2026-11-23T15:30:10Z","deadline":"2026-11-23T15:40:10Z","timeout":"30s",` +
		`"reply_key":"q0Jd3Vh0oSbE6w0vZrDg2KQm6g4b8i1GZ0cS4Yk3cHU=","signature":"ignored"}`
	got, err := api.SignedPayload(api.NewBinding("/ccm/", 0x1c4f3bd2a0e05d71), "web1", []byte(raw))
	require.NoError(t, err)
	assert.Equal(t, `{"cluster":{"id":"1c4f3bd2a0e05d71","prefix":"/ccm"},"node":"web1","request":{"action":"site-info","by":"alice@ops1",`+
		`"created":"2026-11-23T15:30:10Z","deadline":"2026-11-23T15:40:10Z","id":"20261123T153010.123456Z-1a2b3c4d","params":{"site":"shop"},`+
		`"reply_key":"q0Jd3Vh0oSbE6w0vZrDg2KQm6g4b8i1GZ0cS4Yk3cHU=","timeout":"30s"}}`, string(got))

	escaped, err := api.SignedPayload(api.NewBinding("", 1), "web1", []byte(`{"by":"\u003cx\u003e"}`))
	require.NoError(t, err)
	assert.Contains(t, string(escaped), `"by":"<x>"`, "JCS writes strings in one form")
}

// A sealed reply opens with the call's key only.
func TestASealedReplyOpensWithTheCallsKeyOnly(t *testing.T) {
	call, err := api.NewKey()
	require.NoError(t, err)
	other, err := api.NewKey()
	require.NoError(t, err)
	r := api.Reply{Node: "web1", Output: json.RawMessage(`"https://shop.example/login?token=x"`), Error: "stderr"}
	r.SealTo(call.Public())
	assert.Empty(t, r.Output)
	assert.NotContains(t, r.Sealed, "token")
	wrong := r
	assert.ErrorContains(t, wrong.Open(other), "the reply of web1 is sealed, and it does not open with this key")
	kept, err := api.ParseKey(call.Private())
	require.NoError(t, err)
	require.NoError(t, r.Open(kept))
	assert.JSONEq(t, `"https://shop.example/login?token=x"`, string(r.Output))
	assert.Equal(t, "stderr", r.Error)
}
