package objects

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/ccm-dev/ccm/api"
)

// Object is one desired-state object.
type Object struct {
	ID       string
	Type     string
	Revision int64          // etcd mod revision of the key
	Data     map[string]any // the decoded JSON object
}

// Decode parses an object value. It accepts exactly one JSON object in
// valid UTF-8 and nothing after it.
func Decode(value []byte) (map[string]any, error) {
	if !utf8.Valid(value) {
		return nil, errors.New("value is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	var data map[string]any
	if err := dec.Decode(&data); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, fmt.Errorf("value is a JSON %s, want a JSON object", typeErr.Value)
		}
		return nil, fmt.Errorf("value is not valid JSON: %w", err)
	}
	if data == nil {
		return nil, errors.New("value is JSON null, want a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("value has data after the JSON object")
	}
	return data, nil
}

// Key returns the etcd key of an object.
func Key(prefix, typ, id string) string {
	return api.NewKeys(prefix).ObjectKey(typ, id)
}

// Prefix returns the etcd prefix under which all objects of the cluster
// with this prefix live; the layout is cluster's.
func Prefix(prefix string) string {
	return api.NewKeys(prefix).ObjectsPrefix()
}

// ParseKey splits an object key into type and ID, checking the grammar.
func ParseKey(prefix, key string) (typ, id string, err error) {
	rest, ok := strings.CutPrefix(key, Prefix(prefix))
	if !ok {
		return "", "", fmt.Errorf("key %q is not under %s", key, Prefix(prefix))
	}
	typ, id, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("key %q: want %s<type>/<id>", key, Prefix(prefix))
	}
	if err := api.CheckName("type", typ); err != nil {
		return "", "", fmt.Errorf("key %q: %w", key, err)
	}
	if err := api.CheckName("id", id); err != nil {
		return "", "", fmt.Errorf("key %q: %w", key, err)
	}
	return typ, id, nil
}

// Snapshot is every object at one revision.
type Snapshot struct {
	// Revision is the etcd revision the snapshot was read at (0 offline).
	Revision int64
	// Types maps a type to its objects, sorted by ID.
	Types map[string][]Object
	// Invalid maps a type to the errors of its malformed objects, each
	// naming the key. Configurations using the type must not render.
	Invalid map[string][]error
	// Ignored lists keys outside the key grammar.
	Ignored []error
	// Versions maps a type to the last revision that changed any of its
	// objects; equal versions mean equal objects of that type.
	Versions map[string]int64
	// Held is the quarantine: the revision, by "type/id", at which an
	// object is held back. A held object is rendered nowhere and its files
	// stay as they are, until its revision changes. Set by Hold.
	Held map[string]int64
}

// Hold returns a copy of s that holds back the objects of held ("type/id"
// to revision); s itself is shared and never changes.
func (s *Snapshot) Hold(held map[string]int64) *Snapshot {
	c := *s
	c.Held = held
	return &c
}

// Holds reports whether o is held back at its revision.
func (s *Snapshot) Holds(o *Object) bool {
	rev, ok := s.Held[o.Type+"/"+o.ID]
	return ok && rev == o.Revision
}

// List returns the objects of one type, sorted by ID; never nil.
func (s *Snapshot) List(typ string) []Object {
	if l := s.Types[typ]; l != nil {
		return l
	}
	return []Object{}
}

// Check returns an error naming every malformed object of the given types.
func (s *Snapshot) Check(types ...string) error {
	var errs []error
	for _, t := range types {
		errs = append(errs, s.Invalid[t]...)
	}
	return errors.Join(errs...)
}

// Validator checks an object against its type's schema.
type Validator interface {
	Validate(typ string, data map[string]any) error
}

// Builder accumulates key/value pairs into a Snapshot.
type Builder struct {
	prefix string
	check  Validator
	snap   Snapshot
}

// NewBuilder returns a Builder for keys under prefix, checking each object
// with v (nil: no schemas).
func NewBuilder(prefix string, revision int64, v Validator) *Builder {
	return &Builder{prefix: prefix, check: v, snap: Snapshot{
		Revision: revision,
		Types:    map[string][]Object{},
		Invalid:  map[string][]error{},
		Versions: map[string]int64{},
	}}
}

// Add decodes one key/value pair into the snapshot.
func (b *Builder) Add(key string, value []byte, modRevision int64) {
	typ, id, err := ParseKey(b.prefix, key)
	if err != nil {
		b.snap.Ignored = append(b.snap.Ignored, err)
		return
	}
	b.snap.Versions[typ] = max(b.snap.Versions[typ], modRevision)
	data, err := Decode(value)
	if err == nil && b.check != nil {
		err = b.check.Validate(typ, data)
	}
	if err != nil {
		b.snap.Invalid[typ] = append(b.snap.Invalid[typ], objectError(key, typ, id, modRevision, err))
		return
	}
	b.snap.Types[typ] = append(b.snap.Types[typ], Object{ID: id, Type: typ, Revision: modRevision, Data: data})
}

// Snapshot sorts and returns the accumulated snapshot.
func (b *Builder) Snapshot() *Snapshot {
	for _, l := range b.snap.Types {
		sort.Slice(l, func(i, j int) bool { return l[i].ID < l[j].ID })
	}
	s := b.snap
	return &s
}

// ObjectError is a malformed object: bad JSON, or a schema violation. It
// names the key, and carries the object and its revision so that the
// object alone can be quarantined.
type ObjectError struct {
	Key, Type, ID string
	Revision      int64
	Err           error
}

// Error names the key and what is wrong with the object.
func (e *ObjectError) Error() string { return fmt.Sprintf("object %s: %v", e.Key, e.Err) }

// Unwrap returns what is wrong with the object.
func (e *ObjectError) Unwrap() error { return e.Err }

func objectError(key, typ, id string, rev int64, err error) error {
	return &ObjectError{Key: key, Type: typ, ID: id, Revision: rev, Err: err}
}
