package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/gowebpki/jcs"
	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// SignatureNamespace is the SSHSIG namespace of a request's signature
// (ssh-keygen -Y sign -n ccm-action-request): a signature made for a ccm
// request means nothing anywhere else, and nothing else is one.
const SignatureNamespace = "ccm-action-request"

// NewBinding is the binding of the cluster at prefix (DefaultPrefix
// when empty) whose etcd reports clusterID.
func NewBinding(prefix string, clusterID uint64) Binding {
	return Binding{Prefix: strings.TrimSuffix(NewKeys(prefix).Prefix(), "/"), ClusterID: clusterID}
}

// Binding is the cluster a request is signed for: its key prefix and
// etcd's cluster ID. A request signed for one cluster is refused by every
// other, the same prefix and node names notwithstanding.
type Binding struct {
	Prefix    string
	ClusterID uint64
}

// SignedPayload returns the bytes a request's signature covers: the RFC
// 8785 (JCS) form of
//
//	{"cluster":{"id":"<16 hex digits>","prefix":"<prefix>"},"node":"<node>","request":<request>}
//
// where request is the request's JSON as written to etcd, every field
// but "signature". Any language with a JCS library (or, for requests of
// strings only, sorted keys and no spaces) produces the same bytes.
func SignedPayload(b Binding, node string, request []byte) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(request, &fields); err != nil {
		return nil, fmt.Errorf("the request is not a JSON object: %v", err)
	}
	delete(fields, "signature")
	doc, err := json.Marshal(map[string]any{
		"cluster": map[string]string{"id": fmt.Sprintf("%016x", b.ClusterID), "prefix": b.Prefix},
		"node":    node,
		"request": fields,
	})
	if err != nil {
		return nil, err
	}
	return jcs.Transform(doc)
}

// Sign signs req for node in cluster b: its signature field becomes the
// armored SSH signature (as ssh-keygen -Y sign writes it) of the signed
// payload of req, every other field as it is.
func Sign(signer ssh.Signer, b Binding, node string, req *Request) error {
	if err := CheckSigningKey(signer.PublicKey()); err != nil {
		return err
	}
	unsigned := *req
	unsigned.Signature = ""
	raw, err := json.Marshal(&unsigned)
	if err != nil {
		return err
	}
	msg, err := SignedPayload(b, node, raw)
	if err != nil {
		return err
	}
	sig, err := sshsig.Sign(bytes.NewReader(msg), signer, sshsig.HashSHA512, SignatureNamespace)
	if err != nil {
		return fmt.Errorf("sign the request: %w", err)
	}
	req.Signature = string(sshsig.Armor(sig))
	return nil
}

// CheckSigningKey refuses a key of a type no agent accepts: only
// ssh-ed25519 keys sign requests.
func CheckSigningKey(k ssh.PublicKey) error {
	if k.Type() != ssh.KeyAlgoED25519 {
		return fmt.Errorf("a %s key; only ssh-ed25519 keys sign requests (ssh-keygen -t ed25519)", k.Type())
	}
	return nil
}

// LoadSigner reads an unencrypted OpenSSH ed25519 private key, as
// ssh-keygen -t ed25519 writes it with an empty passphrase. Any other
// type is refused here, not first by the node.
func LoadSigner(file string) (ssh.Signer, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--sign-key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(raw)
	if err == nil {
		err = CheckSigningKey(signer.PublicKey())
	}
	if err != nil {
		return nil, fmt.Errorf("--sign-key %s: %w", file, err)
	}
	return signer, nil
}
