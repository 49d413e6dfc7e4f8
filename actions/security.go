package actions

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf16"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// secretPrefix marks a parameter value sealed to a node's key.
const secretPrefix = "ccm-sealed:"

// NodeKey is a node's key pair for secret parameters: callers seal them
// to its public key, published in the node's presence.
type NodeKey struct {
	public, private [32]byte
}

// nodeKeyFile is the private key's file in the state directory.
const nodeKeyFile = "action.key"

// LoadNodeKey reads the node's key from the state directory, creating it
// (mode 0600) at first start. A key or a directory that others may read
// is refused: the key opens every secret sent to the node.
func LoadNodeKey(stateDir string) (*NodeKey, error) {
	path := filepath.Join(stateDir, nodeKeyFile)
	if err := private(stateDir, "directory", "0700"); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createNodeKey(path)
	}
	if err == nil {
		err = private(path, "file", "0600")
	}
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	priv, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(raw)))
	if err != nil || len(priv) != 32 {
		return nil, fmt.Errorf("node key %s: not a base64 32-byte key", path)
	}
	k := &NodeKey{}
	copy(k.private[:], priv)
	pub, err := curve25519.X25519(k.private[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	copy(k.public[:], pub)
	return k, nil
}

// private refuses a path whose mode lets anyone but its owner in.
func private(path, what, want string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("the %s %s is mode %04o; the action key must be 0600 in a 0700 directory (chmod %s %s)", what, path, perm, want, path)
	}
	return nil
}

func createNodeKey(path string) (*NodeKey, error) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(priv[:]) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("node key: %w", err)
	}
	return &NodeKey{public: *pub, private: *priv}, nil
}

// Public is the public key as the node publishes it (base64).
func (k *NodeKey) Public() string { return base64.StdEncoding.EncodeToString(k.public[:]) }

// NewReplyKey returns a fresh key pair for one call: its public half goes
// into the request (reply_key), and the output of a handler that declares
// secret_output is sealed to it.
func NewReplyKey() (*NodeKey, error) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &NodeKey{public: *pub, private: *priv}, nil
}

// Private is the private key in base64, as ccm action run --no-wait
// --reply-key writes it for ccm action get --reply-key.
func (k *NodeKey) Private() string { return base64.StdEncoding.EncodeToString(k.private[:]) }

// ParseReplyKey reads a key that Private wrote.
func ParseReplyKey(private string) (*NodeKey, error) {
	priv, err := base64.StdEncoding.DecodeString(strings.TrimSpace(private))
	if err != nil || len(priv) != 32 {
		return nil, errors.New("not a base64 32-byte key")
	}
	k := &NodeKey{}
	copy(k.private[:], priv)
	pub, err := curve25519.X25519(k.private[:], curve25519.Basepoint)
	if err != nil {
		return nil, err
	}
	copy(k.public[:], pub)
	return k, nil
}

// sealedReply is what a sealed reply's sealed field opens to.
type sealedReply struct {
	Output json.RawMessage `json:"output,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// seal moves the reply's output and error into its sealed field, sealed
// to the caller's reply key; a reply key that is not one leaves neither.
func (r *Reply) seal(replyKey string) {
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
func (r *Reply) Open(key *NodeKey) error {
	if r.Sealed == "" {
		return nil
	}
	clear, err := key.open(r.Sealed)
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

// open unseals a secret parameter value.
func (k *NodeKey) open(value string) (string, error) {
	sealed, ok := strings.CutPrefix(value, secretPrefix)
	if !ok {
		return "", errors.New("is secret but was sent in clear; seal it to the node's key (ccm action run --secret)")
	}
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return "", errors.New("is not a sealed value")
	}
	msg, ok := box.OpenAnonymous(nil, raw, &k.public, &k.private)
	if !ok {
		return "", errors.New("does not open with this node's key (sealed for another node?)")
	}
	return string(msg), nil
}

// Seal encrypts a secret parameter value to a node's public key (base64,
// from its presence).
func Seal(nodePublic, value string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(nodePublic)
	if err != nil || len(raw) != 32 {
		return "", errors.New("the node published no valid action key")
	}
	var pub [32]byte
	copy(pub[:], raw)
	sealed, err := box.SealAnonymous(nil, []byte(value), &pub, rand.Reader)
	if err != nil {
		return "", err
	}
	return secretPrefix + base64.StdEncoding.EncodeToString(sealed), nil
}

// openSecrets returns the parameters with every secret one unsealed, and
// the secret values, to keep them out of replies and logs.
func (h *Handler) openSecrets(params map[string]string, key *NodeKey) (map[string]string, []string, error) {
	out := make(map[string]string, len(params))
	var secrets []string
	var errs []error
	for _, n := range sortedKeys(params) {
		v := params[n]
		if p, ok := h.Params[n]; ok && p.Secret {
			if key == nil {
				errs = append(errs, fmt.Errorf("parameter %s is secret and this node has no key to open it", n))
				continue
			}
			clear, err := key.open(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("parameter %s %v", n, err))
				continue
			}
			v = clear
			secrets = append(secrets, v)
		}
		out[n] = v
	}
	return out, secrets, errors.Join(errs...)
}

// redact replaces every secret value in b: as it is, and as a JSON
// encoder writes it inside a string (Go's, with or without HTML
// escaping, and an ASCII-only one such as Python's json.dumps), so that
// a handler that prints its parameters as JSON does not beat it. This is
// defence in depth: a handler that transforms a secret is its own.
func redact(b []byte, secrets []string) []byte {
	for _, s := range secrets {
		for _, form := range secretForms(s) {
			b = bytes.ReplaceAll(b, []byte(form), []byte("[secret]"))
		}
	}
	return b
}

// secretForms are the forms of a secret redact looks for, longest first.
func secretForms(s string) []string {
	if s == "" {
		return nil
	}
	inString := func(html bool) string {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(html)
		_ = enc.Encode(s)
		return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(buf.String()), `"`), `"`)
	}
	plain := inString(false)
	var ascii strings.Builder // as Python's json.dumps writes it
	for _, r := range plain {
		switch {
		case r < 0x80:
			ascii.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&ascii, "\\u%04x\\u%04x", r1, r2)
		default:
			fmt.Fprintf(&ascii, "\\u%04x", r)
		}
	}
	forms := []string{s, inString(true), plain, ascii.String()}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(forms)
}
