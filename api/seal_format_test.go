package api_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/nacl/box"

	"github.com/ccm-dev/ccm/api"
)

// A sealed value is what REFERENCE ("What a caller writes, byte for
// byte") says, so that another language can write and open one:
// "ccm-sealed:", then base64 of the ephemeral public key and the
// XSalsa20-Poly1305 box under the nonce BLAKE2b-192(ephemeral || recipient).
func TestASealedValueIsTheDocumentedSealedBox(t *testing.T) {
	k, err := api.NewKey()
	require.NoError(t, err)
	sealed, err := api.Seal(k.Public(), "s3cret")
	require.NoError(t, err)
	b64, ok := strings.CutPrefix(sealed, "ccm-sealed:")
	require.True(t, ok)
	raw, err := base64.StdEncoding.DecodeString(b64)
	require.NoError(t, err)
	require.Len(t, raw, 32+box.Overhead+len("s3cret"))

	var eph, recipient, priv [32]byte
	copy(eph[:], raw[:32])
	pub, _ := base64.StdEncoding.DecodeString(k.Public())
	copy(recipient[:], pub)
	privRaw, _ := base64.StdEncoding.DecodeString(k.Private())
	copy(priv[:], privRaw)
	h, err := blake2b.New(24, nil)
	require.NoError(t, err)
	h.Write(eph[:])
	h.Write(recipient[:])
	var nonce [24]byte
	copy(nonce[:], h.Sum(nil))
	msg, ok := box.Open(nil, raw[32:], &nonce, &eph, &priv)
	require.True(t, ok, "opens as the documented box")
	assert.Equal(t, "s3cret", string(msg))
}

// A name outside the key grammar is ErrBadName, which callers match.
func TestABadNameIsErrBadName(t *testing.T) {
	err := api.CheckName("id", "a/b")
	assert.ErrorIs(t, err, api.ErrBadName)
	assert.Contains(t, err.Error(), `id "a/b"`)
	assert.NoError(t, api.CheckName("id", "shop.example"))
}
