package actions

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf16"

	"github.com/ccm-dev/ccm/api"
)

// nodeKeyFile is the private key's file, in the keys directory of the
// state directory (nodeKeyDir), which the agent creates 0700 itself: the
// state directory may be 0755 (a plain mkdir).
const (
	nodeKeyDir  = "keys"
	nodeKeyFile = "action.key"
)

// LoadNodeKey reads the node's key from <stateDir>/keys/action.key,
// creating the directory (0700) and the key (0600) at first start. A key
// at the layout before the keys directory, <stateDir>/action.key, is
// moved there (it must be 0600). A key or a keys directory that others
// may read is refused, and so is a state directory others may write: the
// key opens every secret sent to the node.
func LoadNodeKey(stateDir string) (*api.Key, error) {
	if err := notWritableByOthers(stateDir); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	dir := filepath.Join(stateDir, nodeKeyDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if err := private(dir, "directory", "0700"); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	path := filepath.Join(dir, nodeKeyFile)
	if err := moveOldKey(filepath.Join(stateDir, nodeKeyFile), path); err != nil {
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
	k, err := api.ParseKey(string(raw))
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	return k, nil
}

// moveOldKey moves a key of the layout before the keys directory to
// path: it replaces the one there, as it is the key the node published.
func moveOldKey(old, path string) error {
	if _, err := os.Lstat(old); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := private(old, "file", "0600"); err != nil {
		return err
	}
	return os.Rename(old, path)
}

// notWritableByOthers refuses a directory that its group or others may
// write: they could replace the keys directory.
func notWritableByOthers(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("the state directory %s is mode %04o: others may write it (chmod go-w %s)", dir, perm, dir)
	}
	return nil
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

func createNodeKey(path string) (*api.Key, error) {
	k, err := api.NewKey()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	_, err = f.WriteString(k.Private() + "\n")
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
	return k, nil
}

// openSecrets returns the parameters with every secret one unsealed, and
// the secret values, to keep them out of replies and logs.
func (h *Handler) openSecrets(params map[string]string, key *api.Key) (map[string]string, []string, error) {
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
			clear, err := key.Open(v)
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
