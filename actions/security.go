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
	"strings"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/ssh"
)

// signingDomain starts every signed payload, so that a signature made for
// a ccm request means nothing anywhere else.
const signingDomain = "ccm-action-request-v1\n"

// AuthorizedKeys are the keys whose signatures an agent accepts
// (--action-keys, in OpenSSH authorized_keys format).
type AuthorizedKeys struct {
	file string
	keys map[string]string // marshalled key -> its comment or fingerprint
}

// LoadAuthorizedKeys reads an authorized_keys file of ed25519 keys. Every
// bad line is reported, naming the file and line.
func LoadAuthorizedKeys(file string) (*AuthorizedKeys, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--action-keys: %w", err)
	}
	ak := &AuthorizedKeys{file: file, keys: map[string]string{}}
	var errs []error
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: line %d: not an OpenSSH public key: %v", file, i+1, err))
		case key.Type() != ssh.KeyAlgoED25519:
			errs = append(errs, fmt.Errorf("%s: line %d: a %s key; only ssh-ed25519 keys sign requests", file, i+1, key.Type()))
		default:
			if comment == "" {
				comment = ssh.FingerprintSHA256(key)
			}
			ak.keys[string(key.Marshal())] = comment
		}
	}
	if len(errs) == 0 && len(ak.keys) == 0 {
		errs = append(errs, fmt.Errorf("%s: no key: every request would be rejected", file))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ak, nil
}

// payload is what a signature covers: the node the request is addressed
// to, and every field that decides what runs, and until when.
func payload(node string, req *Request) []byte {
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal(struct {
		Node     string            `json:"node"`
		ID       string            `json:"id"`
		Action   string            `json:"action"`
		Params   map[string]string `json:"params"`
		Created  string            `json:"created"`
		Deadline string            `json:"deadline"`
	}{node, req.ID, req.Action, orEmpty(req.Params), stamp(req.Created), stamp(req.Deadline)})
	return append([]byte(signingDomain), b...)
}

// Sign signs req for node: its signature field becomes the signer's
// public key in authorized_keys form and the signature, in base64.
func Sign(signer ssh.Signer, node string, req *Request) error {
	sig, err := signer.Sign(rand.Reader, payload(node, req))
	if err != nil {
		return fmt.Errorf("sign the request: %w", err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	req.Signature = pub + " " + base64.StdEncoding.EncodeToString(ssh.Marshal(sig))
	return nil
}

// LoadSigner reads an unencrypted OpenSSH private key, as ssh-keygen
// writes it with an empty passphrase.
func LoadSigner(file string) (ssh.Signer, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--sign-key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("--sign-key %s: %w", file, err)
	}
	return signer, nil
}

// Verify checks req's signature for this node and returns who signed it
// (the key's comment). The error says why a request is refused.
func (ak *AuthorizedKeys) Verify(node string, req *Request) (string, error) {
	if req.Signature == "" {
		return "", fmt.Errorf("the request is not signed; this node accepts only requests signed by a key in %s", ak.file)
	}
	fields := strings.Fields(req.Signature)
	if len(fields) != 3 {
		return "", errors.New("the signature is malformed: want \"ssh-ed25519 KEY SIGNATURE\"")
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(fields[0] + " " + fields[1]))
	if err != nil {
		return "", fmt.Errorf("the signature's key is malformed: %v", err)
	}
	who, ok := ak.keys[string(key.Marshal())]
	if !ok {
		return "", fmt.Errorf("signed by %s, a key not in %s", ssh.FingerprintSHA256(key), ak.file)
	}
	raw, err := base64.StdEncoding.DecodeString(fields[2])
	sig := &ssh.Signature{}
	if err == nil {
		err = ssh.Unmarshal(raw, sig)
	}
	if err != nil {
		return "", fmt.Errorf("the signature is malformed: %v", err)
	}
	if err := key.Verify(payload(node, req), sig); err != nil {
		return "", fmt.Errorf("the signature by %s does not verify: the request was changed after it was signed, or was signed for another node", who)
	}
	return who, nil
}

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
// (mode 0600) at first start.
func LoadNodeKey(stateDir string) (*NodeKey, error) {
	path := filepath.Join(stateDir, nodeKeyFile)
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createNodeKey(path)
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

// redact replaces every secret value in b.
func redact(b []byte, secrets []string) []byte {
	for _, s := range secrets {
		if s != "" {
			b = bytes.ReplaceAll(b, []byte(s), []byte("[secret]"))
		}
	}
	return b
}
