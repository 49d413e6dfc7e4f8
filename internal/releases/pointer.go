package releases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/schemas"
)

// ErrMoved is returned when the release pointer, or an object a promote
// checked, changed between the read and the write: nothing was written.
var ErrMoved = errors.New("changed meanwhile; nothing written, try again")

// ErrNoHistory is returned by Rollback when no earlier release is recorded.
var ErrNoHistory = errors.New("no earlier release to roll back to")

// etcdError marks an error of etcd's (unreachable, a timeout, a refused
// token) rather than of a release: worth a retry, never a failed run.
type etcdError struct{ err error }

func (e etcdError) Error() string { return e.err.Error() }
func (e etcdError) Unwrap() error { return e.err }

// Transient reports whether err came from etcd rather than from a release:
// the read may succeed later.
func Transient(err error) bool {
	var e etcdError
	return errors.As(err, &e)
}

// DecodePointer reads the value of the release pointer key; a value ccm
// did not write is an error naming the key. The format is decided in
// api.DecodeReleasePointer, which ccm status reads it with too.
func DecodePointer(key string, raw []byte) (*api.ReleasePointer, error) {
	return api.DecodeReleasePointer(key, raw)
}

// Current returns the promoted release and the pointer's mod revision:
// nil and 0 when none is promoted (agents read their --config-dir).
func (s *Store) Current(ctx context.Context) (*api.ReleasePointer, int64, error) {
	key := s.keys.ReleasePointerKey()
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return nil, 0, etcdError{fmt.Errorf("read %s: %w", key, err)}
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	p, err := DecodePointer(key, resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return p, resp.Kvs[0].ModRevision, nil
}

// Promotion is one move of the pointer.
type Promotion struct {
	ID     string // the full id of a stored release
	By     string
	Reason string
	// ObjectsAt, when set, is the revision the caller checked every
	// object at (against the release's schemas): the pointer moves only
	// if no object was written since.
	ObjectsAt int64
	// Rollback drops ID from the history instead of adding the release it
	// replaces.
	Rollback bool
}

// Promote moves the pointer from the one read at rev (0: none) to p.ID,
// which must be stored. It returns the new pointer, or ErrMoved when the
// pointer (or an object, with ObjectsAt) changed since.
func (s *Store) Promote(ctx context.Context, cur *api.ReleasePointer, rev int64, p Promotion) (*api.ReleasePointer, error) {
	if resp, err := s.kv.Get(ctx, s.keys.ReleaseKey(p.ID), clientv3.WithKeysOnly()); err != nil {
		return nil, etcdError{fmt.Errorf("read %s: %w", s.keys.ReleaseKey(p.ID), err)}
	} else if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("release %s: %w", Short(p.ID), ErrNotFound)
	}
	next := &api.ReleasePointer{ID: p.ID, By: p.By, Time: time.Now().UTC(), Reason: p.Reason}
	switch {
	case cur == nil:
	case p.Rollback:
		next.History = slices.Clone(cur.History[1:])
	default:
		next.History = append([]string{cur.ID}, cur.History...)
	}
	next.History = next.History[:min(len(next.History), api.MaxReleaseHistory)]
	raw, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	key := s.keys.ReleasePointerKey()
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
	if p.ObjectsAt > 0 {
		objects := s.keys.ObjectsPrefix()
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(objects), "<", p.ObjectsAt+1).WithPrefix())
	}
	resp, err := s.kv.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(raw))).Commit()
	if err != nil {
		return nil, etcdError{fmt.Errorf("write %s: %w", key, err)}
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("promote release %s: the release pointer or an object %w", Short(p.ID), ErrMoved)
	}
	return next, nil
}

// Rollback promotes the release promoted before the current one, and
// drops it from the history: rollbacks walk back one release at a time.
func (s *Store) Rollback(ctx context.Context, by string) (*api.ReleasePointer, error) {
	cur, rev, err := s.Current(ctx)
	if err != nil {
		return nil, err
	}
	if cur == nil || len(cur.History) == 0 {
		return nil, ErrNoHistory
	}
	return s.Promote(ctx, cur, rev, Promotion{ID: cur.History[0], By: by, Reason: "rollback from " + Short(cur.ID), Rollback: true})
}

// Schemas returns the object schemas of release id, loaded once per
// release: what ccm object put and import check objects against once it
// is promoted (client.Options.ReleaseSchemas), once verify (nil: no
// check) accepts its signature.
func (s *Store) Schemas(verify func(*Release) error) func(ctx context.Context, id string) (*schemas.Set, error) {
	var mu sync.Mutex
	cache := map[string]*schemas.Set{}
	return func(ctx context.Context, id string) (*schemas.Set, error) {
		mu.Lock()
		defer mu.Unlock()
		if sch, ok := cache[id]; ok {
			return sch, nil
		}
		dir, cleanup, err := s.Open(ctx, id, verify)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		sch, err := schemas.Load(dir)
		if err != nil {
			return nil, fmt.Errorf("the promoted release %s: %w", Short(id), err)
		}
		cache[id] = sch
		return sch, nil
	}
}
