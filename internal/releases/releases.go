// Package releases packs a configuration directory into an immutable,
// content-addressed release, stores it in etcd in chunks that respect
// etcd's request limits, and fetches and verifies it again: its digest,
// each file's digest, and an optional SSH signature.
package releases

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
)

// MaxBytes is the largest release: the sum of its files. A configuration
// directory is templates and helpers, not data; a larger one is refused,
// giving its size.
const MaxBytes = 32 << 20

// ChunkBytes is the largest value one stored chunk holds, well under
// etcd's default 1.5 MiB request limit.
const ChunkBytes = 512 << 10

// SignatureNamespace is the SSHSIG namespace of a release's signature
// (ssh-keygen -Y sign -n ccm-release): a release signature means nothing
// anywhere else.
const SignatureNamespace = "ccm-release"

// File is one file of a release.
type File struct {
	Path   string      `json:"path"` // slash-separated, relative to the directory
	Mode   fs.FileMode `json:"mode"` // permission bits only
	Size   int         `json:"size"`
	SHA256 string      `json:"sha256"`
	Chunks int         `json:"chunks"`
	// Content is the file's bytes; stored in chunks, not in the manifest.
	Content []byte `json:"-"`
}

// Release is a configuration directory at one content: its ID is the
// digest of every file's path, mode and bytes.
type Release struct {
	ID      string    `json:"id"`
	Author  string    `json:"author,omitempty"`
	Time    time.Time `json:"time"`
	Message string    `json:"message,omitempty"`
	Files   []File    `json:"files"` // sorted by path
	// Signature is the armored SSHSIG of SignedBytes(ID), "" when unsigned.
	Signature string `json:"signature,omitempty"`
}

// Pack reads every regular file under dir (dot files and directories
// left out) into a canonical release, each file with its StagedMode. A
// symlink, a file not readable by everyone (a release holds no secrets),
// or a release over MaxBytes, is an error naming it.
func Pack(dir string) (*Release, error) {
	r := &Release{}
	total := 0
	var errs []error
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			errs = append(errs, fmt.Errorf("%s: not a regular file: a release holds files only", p))
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if err := checkPath(filepath.ToSlash(rel)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			return nil
		}
		if info.Mode().Perm()&0o004 == 0 {
			errs = append(errs, fmt.Errorf("%s: mode %04o: not readable by everyone, so it looks like a secret; a release is readable by every node "+
				"and holds no secrets: put them in objects, or send them as secret action parameters (ccm action run --secret)", p, uint32(info.Mode().Perm())))
			return nil
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		total += len(content)
		r.Files = append(r.Files, newFile(filepath.ToSlash(rel), StagedMode(info.Mode()), content))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if total > MaxBytes {
		errs = append(errs, fmt.Errorf("%s: %d bytes in %d files, over the release limit of %d bytes", dir, total, len(r.Files), MaxBytes))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(r.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	r.ID = digest(r.Files)
	return r, nil
}

func newFile(path string, mode fs.FileMode, content []byte) File {
	sum := sha256.Sum256(content)
	return File{Path: path, Mode: mode, Size: len(content), SHA256: hex.EncodeToString(sum[:]),
		Chunks: chunksOf(len(content)), Content: content}
}

// digest is the release ID: SHA-256 over one line per file, in path order,
// of its path, its mode in octal, its size and its SHA-256.
func digest(files []File) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%04o\x00%d\x00%s\n", f.Path, uint32(f.Mode), f.Size, f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Check verifies that the release is canonical (checkManifest) and that
// the files are what it says: each file's size and digest, and the
// release ID. Every mismatch is named.
func (r *Release) Check() error {
	if err := checkManifest(r); err != nil {
		return err
	}
	var errs []error
	for _, f := range r.Files {
		sum := sha256.Sum256(f.Content)
		if len(f.Content) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			errs = append(errs, fmt.Errorf("release %s: file %s: its content does not match its digest", r.Short(), f.Path))
		}
	}
	if got := digest(r.Files); got != r.ID {
		errs = append(errs, fmt.Errorf("release %s: its files digest to %s, not to its id", r.Short(), got[:12]))
	}
	return errors.Join(errs...)
}

// CheckID refuses anything but a full release ID: 64 lowercase hex
// digits.
func CheckID(id string) error { return api.CheckReleaseID(id) }

// Short is the ID as the CLI shows it: its first 12 hex digits.
func (r *Release) Short() string { return Short(r.ID) }

// Short abbreviates a release ID.
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// SignedBytes is what a release's signature covers: the namespace and the
// ID, which is the digest of every file.
func SignedBytes(id string) []byte { return []byte(SignatureNamespace + ":" + id + "\n") }

// Sign signs the release with signer; its comment becomes the author when
// the release names none.
func (r *Release) Sign(signer ssh.Signer, comment string) error {
	sig, err := sshsig.Sign(bytes.NewReader(SignedBytes(r.ID)), signer, sshsig.HashSHA512, SignatureNamespace)
	if err != nil {
		return fmt.Errorf("sign release %s: %w", r.Short(), err)
	}
	r.Signature = string(sshsig.Armor(sig))
	if r.Author == "" {
		r.Author = comment
	}
	return nil
}

// Verify checks the release's signature against the trusted keys
// (trusted returns a key's name, and whether it is trusted; a name with
// false says why a known key is not trusted now), and returns
// the name of the key that signed it. An unsigned release, or one signed
// by any other key, is refused.
func (r *Release) Verify(trusted func(ssh.PublicKey) (string, bool)) (string, error) {
	if err := checkManifest(r); err != nil {
		return "", err
	}
	if got := digest(r.Files); got != r.ID {
		return "", fmt.Errorf("release %s: its manifest digests to %s, not to its id", r.Short(), got[:12])
	}
	if r.Signature == "" {
		return "", fmt.Errorf("release %s is not signed, and release keys are configured", r.Short())
	}
	sig, err := sshsig.Unarmor([]byte(r.Signature))
	if err != nil {
		return "", fmt.Errorf("release %s: signature: %w", r.Short(), err)
	}
	name, ok := trusted(sig.PublicKey)
	switch {
	case !ok && name != "":
		return "", fmt.Errorf("release %s is signed by %s (%s), a release key no longer valid", r.Short(), name, ssh.FingerprintSHA256(sig.PublicKey))
	case !ok:
		return "", fmt.Errorf("release %s is signed by %s, which is not a release key", r.Short(), ssh.FingerprintSHA256(sig.PublicKey))
	}
	if err := sshsig.Verify(bytes.NewReader(SignedBytes(r.ID)), sig, sig.PublicKey, sig.HashAlgorithm, SignatureNamespace); err != nil {
		return "", fmt.Errorf("release %s: the signature of %s does not hold: %w", r.Short(), name, err)
	}
	return name, nil
}

// NoKeysWarning is what the agent and every command that loads a release
// to run or check it say when no release keys are configured.
const NoKeysWarning = "releases are authenticated by etcd RBAC alone: no --release-keys (CCM_RELEASE_KEYS), so any identity that may write the release pointer and the releases chooses what this node runs as root"

// Verifier returns the check of a release's signature against keys
// (nil: no check, etcd RBAC alone protects releases).
func Verifier(trusted func(ssh.PublicKey) (string, bool)) func(*Release) error {
	if trusted == nil {
		return nil
	}
	return func(r *Release) error {
		_, err := r.Verify(trusted)
		return err
	}
}

// Stage writes the release's files under dir, which must not exist: into
// a temporary sibling first, renamed into place once complete, so that a
// staged release is whole or absent. Each file gets its StagedMode and is
// owned by the caller (root on a node): nobody else may change it.
func (r *Release) Stage(dir string) error {
	if err := r.Check(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".stage-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, f := range r.Files {
		p := filepath.Join(tmp, filepath.FromSlash(f.Path)) // canonical: checked above
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeFile(p, f.Content, StagedMode(f.Mode)); err != nil {
			return err
		}
	}
	if err := chmodDirs(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// writeFile creates p with content and exactly mode, past the umask.
func writeFile(p string, content []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// chmodDirs gives every directory of a staged tree mode 0755, past the
// umask: readable by handlers that run as other users, writable by none.
func chmodDirs(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(p, 0o755)
	})
}
