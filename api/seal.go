package api

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// SealedPrefix marks a value sealed to a key: a secret parameter sealed to
// a node's key, or a reply sealed to a call's.
const SealedPrefix = "ccm-sealed:"

// Key is an X25519 key pair of nacl/box: a node's, to which callers seal
// secret parameters (its public half is in the node's presence), or a
// call's, to which a node seals a secret output (its public half is the
// request's reply_key).
type Key struct {
	public, private [32]byte
}

// NewKey returns a fresh key pair.
func NewKey() (*Key, error) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Key{public: *pub, private: *priv}, nil
}

// ParseKey reads a private key as Private writes it.
func ParseKey(private string) (*Key, error) {
	priv, err := base64.StdEncoding.DecodeString(strings.TrimSpace(private))
	if err != nil || len(priv) != 32 {
		return nil, errors.New("not a base64 32-byte key")
	}
	k := &Key{}
	copy(k.private[:], priv)
	pub, err := curve25519.X25519(k.private[:], curve25519.Basepoint)
	if err != nil {
		return nil, err
	}
	copy(k.public[:], pub)
	return k, nil
}

// Public is the public key in base64, as a presence or a request carries
// it.
func (k *Key) Public() string { return base64.StdEncoding.EncodeToString(k.public[:]) }

// Private is the private key in base64.
func (k *Key) Private() string { return base64.StdEncoding.EncodeToString(k.private[:]) }

// Open unseals a value sealed to k.
func (k *Key) Open(value string) (string, error) {
	sealed, ok := strings.CutPrefix(value, SealedPrefix)
	if !ok {
		return "", errors.New("is secret but was sent in clear; seal it to the node's key (ccm action run --secret)")
	}
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return "", errors.New("is not a sealed value")
	}
	msg, ok := box.OpenAnonymous(nil, raw, &k.public, &k.private)
	if !ok {
		return "", errors.New("does not open with this key (sealed for another node?)")
	}
	return string(msg), nil
}

// Seal encrypts value to a public key (base64: a node's action key, or a
// request's reply key) as an anonymous sealed box.
func Seal(public, value string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(public)
	if err != nil || len(raw) != 32 {
		return "", errors.New("not a valid public key")
	}
	var pub [32]byte
	copy(pub[:], raw)
	sealed, err := box.SealAnonymous(nil, []byte(value), &pub, rand.Reader)
	if err != nil {
		return "", err
	}
	return SealedPrefix + base64.StdEncoding.EncodeToString(sealed), nil
}

// sealedReply is what a sealed reply's sealed field opens to.
type sealedReply struct {
	Output json.RawMessage `json:"output,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// SealTo moves the reply's output and error into its sealed field, sealed
// to replyKey; a reply key that is not one leaves neither.
func (r *Reply) SealTo(replyKey string) {
	raw, _ := json.Marshal(sealedReply{Output: r.Output, Error: r.Error})
	r.Output, r.Error = nil, ""
	sealed, err := Seal(replyKey, string(raw))
	if err != nil {
		r.Error = "the output is secret and the request's reply_key is not a key: it was dropped"
		return
	}
	r.Sealed = sealed
}

// Open fills the output and error of a sealed reply with key, the call's
// reply key. A reply that is not sealed is left as it is.
func (r *Reply) Open(key *Key) error {
	if r.Sealed == "" {
		return nil
	}
	clear, err := key.Open(r.Sealed)
	if err != nil {
		return fmt.Errorf("the reply of %s is sealed, and it %v", r.Node, strings.TrimPrefix(err.Error(), "is "))
	}
	var s sealedReply
	if err := json.Unmarshal([]byte(clear), &s); err != nil {
		return fmt.Errorf("the sealed reply of %s: %w", r.Node, err)
	}
	r.Output, r.Error = s.Output, s.Error
	return nil
}
