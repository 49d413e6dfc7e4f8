package actions

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
)

// Grant is one key of an authorized_keys file and what it may do.
type Grant struct {
	// Name is the key's comment (its fingerprint when it has none): the
	// caller a signed request is shown as, whatever its by field says.
	Name string
	// Actions and Nodes, when set, are the only actions the key may call
	// and the only nodes it may call them on (ccm-actions="a,b",
	// ccm-nodes="web*"; path.Match patterns).
	Actions []string
	Nodes   []string
	// Expires, when set, is the end of the key's validity
	// (expiry-time="YYYYMMDD[HHMM[SS]][Z]", as OpenSSH reads it).
	Expires time.Time
}

// AuthorizedKeys are the keys whose signatures an agent accepts
// (--action-keys, in OpenSSH authorized_keys format).
type AuthorizedKeys struct {
	file string
	keys map[string]*Grant // marshalled key -> its grant
}

// keyOptions are the authorized_keys options ccm reads; it refuses any
// other rather than ignore what an operator wrote.
var keyOptions = []string{"ccm-actions", "ccm-nodes", "expiry-time"}

// releaseKeyOptions are the options a release key may have: a release
// is signed for every node and runs whatever actions it holds, so
// ccm-actions and ccm-nodes mean nothing there.
var releaseKeyOptions = []string{"expiry-time"}

// LoadAuthorizedKeys reads an authorized_keys file of ed25519 keys and
// their options (--action-keys). Every bad line is reported, naming the
// file and line.
func LoadAuthorizedKeys(file string) (*AuthorizedKeys, error) {
	return loadKeys(file, keyOptions)
}

// LoadReleaseKeys reads the authorized_keys file of the keys that sign
// configuration releases (--release-keys, CCM_RELEASE_KEYS). A key with
// an option that does not apply to a release (ccm-actions, ccm-nodes)
// is refused, naming its line: a limit ccm would not enforce is never
// read as one.
func LoadReleaseKeys(file string) (*AuthorizedKeys, error) {
	return loadKeys(file, releaseKeyOptions)
}

func loadKeys(file string, allowed []string) (*AuthorizedKeys, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	ak := &AuthorizedKeys{file: file, keys: map[string]*Grant{}}
	lineOf := map[string]int{}
	var errs []error
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: line %d: %s", file, i+1, fmt.Sprintf(format, a...)))
		}
		if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			// A lone CR would join the next key into this line's comment.
			fail("holds a control character (a CR line ending?): one key a line, LF-terminated")
			continue
		}
		key, comment, options, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			fail("not an OpenSSH public key: %v", err)
			continue
		}
		if err := api.CheckSigningKey(key); err != nil {
			fail("%v", err)
			continue
		}
		if prev, ok := lineOf[string(key.Marshal())]; ok {
			fail("the key of line %d again; give each key one line", prev)
			continue
		}
		lineOf[string(key.Marshal())] = i + 1
		g, optErrs := grantOf(options, allowed)
		for _, e := range optErrs {
			fail("%v", e)
		}
		if comment == "" {
			comment = ssh.FingerprintSHA256(key)
		}
		g.Name = comment
		ak.keys[string(key.Marshal())] = g
	}
	if len(errs) == 0 && len(ak.keys) == 0 {
		errs = append(errs, fmt.Errorf("%s: no key: every request would be rejected", file))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ak, nil
}

// Trusted returns the name of key and true when the file holds it and
// it has not expired: the check a release's signature needs
// (releases.Verify). For a key the file holds that has expired it
// returns why ("NAME, whose expiry-time ... has passed") and false; for
// any other key, "" and false.
func (ak *AuthorizedKeys) Trusted(key ssh.PublicKey) (string, bool) {
	g, ok := ak.keys[string(key.Marshal())]
	switch {
	case !ok:
		return "", false
	case !g.Expires.IsZero() && time.Now().After(g.Expires):
		return fmt.Sprintf("%s, whose expiry-time %s in %s has passed", g.Name, g.Expires.Format(time.RFC3339), ak.file), false
	}
	return g.Name, true
}

// grantOf reads a key's options.
func grantOf(options, allowed []string) (*Grant, []error) {
	g := &Grant{}
	var errs []error
	seen := map[string]bool{}
	for _, opt := range options {
		name, value, hasValue := strings.Cut(opt, "=")
		if !slices.Contains(allowed, name) {
			errs = append(errs, fmt.Errorf("option %s: ccm reads only %s here, and refuses a key rather than ignore an option", name, strings.Join(allowed, ", ")))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("option %s: given twice; give each option once (which one would hold is not obvious)", name))
			continue
		}
		seen[name] = true
		// Only OpenSSH's double quotes quote: a backquoted `*` is not
		// every node, as OpenSSH reads it literally.
		if strings.HasPrefix(value, `"`) {
			uq, err := strconv.Unquote(value)
			if err != nil {
				errs = append(errs, fmt.Errorf("option %s: %s is not a double-quoted value", name, value))
				continue
			}
			value = uq
		}
		if !hasValue || value == "" {
			errs = append(errs, fmt.Errorf("option %s: needs a value (%s=\"...\")", name, name))
			continue
		}
		switch name {
		case "expiry-time":
			t, err := parseExpiry(value)
			if err != nil {
				errs = append(errs, fmt.Errorf("option expiry-time=%q: %v", value, err))
			}
			g.Expires = t
		default:
			list := strings.Split(value, ",")
			for _, p := range list {
				if _, err := path.Match(p, ""); err != nil || p == "" {
					errs = append(errs, fmt.Errorf("option %s: %q is not a name or pattern", name, p))
				}
			}
			if name == "ccm-actions" {
				g.Actions = list
			} else {
				g.Nodes = list
			}
		}
	}
	return g, errs
}

// parseExpiry reads OpenSSH's expiry-time: YYYYMMDD or YYYYMMDDHHMM[SS],
// in the system's time zone, or in UTC with a trailing Z.
func parseExpiry(s string) (time.Time, error) {
	loc := time.Local
	if v, ok := strings.CutSuffix(s, "Z"); ok {
		s, loc = v, time.UTC
	}
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(s) == len(layout) {
			return time.ParseInLocation(layout, s, loc)
		}
	}
	return time.Time{}, errors.New("want YYYYMMDD or YYYYMMDDHHMM[SS], with Z for UTC")
}

// Verify checks the signature of a request, raw as read from etcd and
// decoded into req, for node in cluster b, and that its key may call this
// action on this node now. It returns the key's grant; the error says why
// a request is refused.
func (ak *AuthorizedKeys) Verify(b api.Binding, node string, raw []byte, req *api.Request, now time.Time) (*Grant, error) {
	if req.Signature == "" {
		return nil, fmt.Errorf("not signed: this node runs only requests signed by a key in %s", ak.file)
	}
	sig, err := sshsig.Unarmor([]byte(req.Signature))
	if err != nil {
		return nil, fmt.Errorf("the signature is malformed (want an armored SSH signature, as ssh-keygen -Y sign writes): %v", err)
	}
	g, ok := ak.keys[string(sig.PublicKey.Marshal())]
	if !ok {
		return nil, fmt.Errorf("signed by %s, a key not in %s", ssh.FingerprintSHA256(sig.PublicKey), ak.file)
	}
	msg, err := api.SignedPayload(b, node, raw)
	if err == nil {
		err = sshsig.Verify(bytes.NewReader(msg), sig, sig.PublicKey, sig.HashAlgorithm, api.SignatureNamespace)
	}
	if err != nil {
		return nil, fmt.Errorf("the signature by %s does not verify: the request was changed after it was signed, or was signed for another node or cluster", g.Name)
	}
	switch {
	case !g.Expires.IsZero() && now.After(g.Expires):
		return nil, fmt.Errorf("the key of %s expired at %s (expiry-time in %s)", g.Name, g.Expires.UTC().Format(time.RFC3339), ak.file)
	case !matchAny(g.Actions, req.Action):
		return nil, fmt.Errorf("the key of %s may not call %s (ccm-actions=%q in %s)", g.Name, req.Action, strings.Join(g.Actions, ","), ak.file)
	case !matchAny(g.Nodes, node):
		return nil, fmt.Errorf("the key of %s may not call node %s (ccm-nodes=%q in %s)", g.Name, node, strings.Join(g.Nodes, ","), ak.file)
	}
	return g, nil
}

// matchAny reports whether name matches one of patterns; no patterns
// match everything.
func matchAny(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
