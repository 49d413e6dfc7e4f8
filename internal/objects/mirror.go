package objects

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Mirror is a local copy of every object, fed by the watch stream (an
// informer cache), so that a run renders from memory and never re-reads the
// whole prefix. It is safe for concurrent use; snapshots it returns are
// immutable and share unchanged per-type lists between calls.
type Mirror struct {
	prefix string

	mu sync.RWMutex
	// rev is the revision the mirror is known complete up to (events,
	// lists and progress notifications); Sync waits on it.
	rev int64
	// applied is the revision of the last event applied, or of the last
	// list. Duplicates are detected, and watches resumed, against applied,
	// never rev: some etcd servers (3.4 before 3.4.25, 3.5 before 3.5.8)
	// send a progress notification ahead of events a catching-up watch has
	// not delivered yet, and trusting it would drop those events.
	applied int64
	invalid map[string]map[string]error // type -> id -> decode error
	schema  map[string]map[string]error // type -> id -> schema error (the object is in objs)
	check   Validator                   // nil: no schemas
	ignored map[string]error            // key -> grammar error
	// sorted holds each object once: type -> objects in ID order, kept
	// in order event by event (a binary search and a copy, never a sort).
	sorted  map[string][]Object
	shared  map[string]bool  // type -> its list was handed out: copy before changing it
	version map[string]int64 // type -> last revision that changed it
	revCh   chan struct{}    // closed and replaced when rev grows
}

// NewMirror returns an empty mirror of the objects under prefix.
func NewMirror(prefix string) *Mirror {
	m := &Mirror{prefix: prefix, revCh: make(chan struct{})}
	m.clear()
	return m
}

func (m *Mirror) clear() {
	m.invalid = map[string]map[string]error{}
	m.schema = map[string]map[string]error{}
	m.ignored = map[string]error{}
	m.sorted = map[string][]Object{}
	m.shared = map[string]bool{}
	m.version = map[string]int64{}
}

// KV is one key/value of a list or a watch event.
type KV struct {
	Key         string
	Value       []byte
	ModRevision int64
	Deleted     bool
}

// Reset replaces the whole mirror with a list taken at rev.
func (m *Mirror) Reset(kvs []KV, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.version
	m.clear()
	for _, kv := range kvs { // a list has each key once: append, sort once
		if typ, o, ok := m.decodeLocked(kv); ok && o != nil {
			m.sorted[typ] = append(m.sorted[typ], *o)
		}
	}
	for _, l := range m.sorted {
		slices.SortFunc(l, byID)
	}
	// A list cannot show what was deleted since the last event seen, so
	// every type, present or gone, counts as changed at rev.
	for typ := range old {
		m.version[typ] = rev
	}
	for typ := range m.version {
		m.version[typ] = rev
	}
	// The list is the truth at rev, even below what the mirror held: an
	// etcd restored from a snapshot lists an older revision.
	m.applied = rev
	m.rev = rev
	close(m.revCh)
	m.revCh = make(chan struct{})
}

// Apply applies watch events and returns the types they changed. Events
// at or below the last applied revision were applied already and are
// skipped, so a resumed watch never applies an event twice.
func (m *Mirror) Apply(kvs []KV) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	var types []string
	// One response carries every event of a revision (a transaction), so
	// duplicates are judged against what was applied before this batch.
	before := m.applied
	for _, kv := range kvs {
		if kv.ModRevision <= before {
			continue
		}
		m.applied = max(m.applied, kv.ModRevision)
		if t, ok := m.applyLocked(kv); ok && !seen[t] {
			seen[t] = true
			types = append(types, t)
		}
	}
	return types
}

// applyLocked applies one key; it reports the type when a valid key
// changed.
func (m *Mirror) applyLocked(kv KV) (string, bool) {
	typ, o, ok := m.decodeLocked(kv)
	if ok {
		m.placeLocked(typ, idOf(m.prefix, kv.Key), o)
	}
	return typ, ok
}

// decodeLocked records one key's errors and returns its object (nil:
// deleted or malformed); ok is false for a key outside the grammar.
func (m *Mirror) decodeLocked(kv KV) (typ string, o *Object, ok bool) {
	typ, id, err := ParseKey(m.prefix, kv.Key)
	if err != nil {
		if kv.Deleted {
			delete(m.ignored, kv.Key)
		} else {
			m.ignored[kv.Key] = err
		}
		return "", nil, false
	}
	m.version[typ] = max(m.version[typ], kv.ModRevision)
	delete(m.invalid[typ], id)
	delete(m.schema[typ], id)
	if kv.Deleted {
		return typ, nil, true
	}
	data, err := Decode(kv.Value)
	if err != nil {
		if m.invalid[typ] == nil {
			m.invalid[typ] = map[string]error{}
		}
		m.invalid[typ][id] = objectError(kv.Key, typ, id, kv.ModRevision, err)
		return typ, nil, true
	}
	m.validateLocked(kv, typ, id, data)
	return typ, &Object{ID: id, Type: typ, Revision: kv.ModRevision, Data: data}, true
}

// idOf is the ID of a key ParseKey accepted.
func idOf(prefix, key string) string { return key[strings.LastIndexByte(key, '/')+1:] }

func byID(a, b Object) int { return strings.Compare(a.ID, b.ID) }

// placeLocked keeps the list of typ in order after the object id became o
// (nil: gone), so that one event costs a binary search and a copy, not a
// sort of the whole type. A list a snapshot holds is copied first:
// snapshots never change.
func (m *Mirror) placeLocked(typ, id string, o *Object) {
	l := m.sorted[typ]
	i, found := slices.BinarySearchFunc(l, id, func(e Object, id string) int { return strings.Compare(e.ID, id) })
	if !found && o == nil {
		return
	}
	if m.shared[typ] {
		l = slices.Grow(slices.Clone(l), 1)
		m.shared[typ] = false
	}
	switch {
	case found && o != nil:
		l[i] = *o
	case found:
		l = slices.Delete(l, i, i+1)
	default:
		l = slices.Insert(l, i, *o)
	}
	m.sorted[typ] = l
}

// validateLocked records whether an object breaks its type's schema.
func (m *Mirror) validateLocked(kv KV, typ, id string, data map[string]any) bool {
	if m.check == nil {
		return false
	}
	err := m.check.Validate(typ, data)
	if err == nil {
		return false
	}
	if m.schema[typ] == nil {
		m.schema[typ] = map[string]error{}
	}
	m.schema[typ][id] = objectError(kv.Key, typ, id, kv.ModRevision, err)
	return true
}

// SetValidator checks every object against v from now on (nil: no
// schemas), and at once against the objects held. The types whose
// validity changed count as changed.
func (m *Mirror) SetValidator(v Validator) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.check = v
	before := m.schema
	m.schema = map[string]map[string]error{}
	for typ, l := range m.sorted {
		for _, o := range l {
			m.validateLocked(KV{Key: Key(m.prefix, typ, o.ID), ModRevision: o.Revision}, typ, o.ID, o.Data)
		}
	}
	for typ := range m.sorted {
		if len(before[typ]) != len(m.schema[typ]) || len(m.schema[typ]) > 0 {
			m.version[typ] = m.rev
		}
	}
}

// SetRevision records that the mirror holds every change up to rev (from a
// watch response or progress notification).
func (m *Mirror) SetRevision(rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setRevisionLocked(rev)
}

func (m *Mirror) setRevisionLocked(rev int64) {
	if rev > m.rev {
		m.rev = rev
		close(m.revCh)
		m.revCh = make(chan struct{})
	}
}

// Revision returns the revision up to which the mirror is complete.
func (m *Mirror) Revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// Applied returns the revision of the last event applied (or of the last
// list): a watch that resumes must start right after it.
func (m *Mirror) Applied() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.applied
}

// Held returns, read together, the revision of the last event applied
// and how many keys the mirror holds: objects, malformed objects and keys
// outside the grammar, as a count of the prefix in etcd finds them.
func (m *Mirror) Held() (applied, keys int64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	keys = int64(len(m.ignored))
	for _, l := range m.sorted {
		keys += int64(len(l))
	}
	for _, bad := range m.invalid {
		keys += int64(len(bad))
	}
	return m.applied, keys
}

// WaitRevision blocks until the mirror reaches rev or ctx ends.
func (m *Mirror) WaitRevision(ctx context.Context, rev int64) error {
	for {
		m.mu.RLock()
		cur, ch := m.rev, m.revCh
		m.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Snapshot returns the mirror's objects as a Snapshot at its revision.
func (m *Mirror) Snapshot() *Snapshot { return m.snapshot(func() int64 { return m.rev }) }

// AppliedSnapshot is Snapshot at the revision of the last event applied,
// not of a progress notification: what a run may claim when it could not
// confirm that the mirror holds every write up to its revision (a
// progress notification of an older etcd may come ahead of events).
func (m *Mirror) AppliedSnapshot() *Snapshot { return m.snapshot(func() int64 { return m.applied }) }

// SnapshotConfirmed is Snapshot at what a confirmation vouches for: with
// held as its last event applied, the mirror held what etcd held at
// target. While held is still the last event applied, the snapshot
// claims the later of target and held, not a revision a progress
// notification that came ahead of events moved the mirror to. Once later
// events came, it claims the last of them: the events between held and
// target may net to nothing (an object created, then deleted), and part
// of them does not.
func (m *Mirror) SnapshotConfirmed(target, held int64) *Snapshot {
	return m.snapshot(func() int64 {
		if m.applied == held {
			return min(m.rev, max(target, held))
		}
		return m.applied
	})
}

// snapshot copies the mirror at the revision claim returns, read under
// the mirror's lock.
func (m *Mirror) snapshot(claim func() int64) *Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	rev := claim()
	s := &Snapshot{Revision: rev, Types: make(map[string][]Object, len(m.sorted)), Invalid: map[string][]error{},
		Versions: make(map[string]int64, len(m.version))}
	for typ, v := range m.version {
		s.Versions[typ] = v
	}
	for typ, l := range m.sorted {
		if len(l) > 0 {
			s.Types[typ] = l
			m.shared[typ] = true
		}
	}
	for _, bad := range []map[string]map[string]error{m.invalid, m.schema} {
		for typ, byID := range bad {
			for _, id := range sortedIDs(byID) {
				s.Invalid[typ] = append(s.Invalid[typ], byID[id])
			}
		}
	}
	for _, key := range sortedIDs(m.ignored) {
		s.Ignored = append(s.Ignored, m.ignored[key])
	}
	return s
}

func sortedIDs(m map[string]error) []string { return slices.Sorted(maps.Keys(m)) }
