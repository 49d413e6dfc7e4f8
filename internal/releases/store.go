package releases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// ErrNotFound is returned for a release that is not stored (or not
// completely: its manifest is written last).
var ErrNotFound = errors.New("no such release")

// Store keeps releases in one cluster's etcd.
type Store struct {
	kv   clientv3.KV
	keys api.Keys
}

// NewStore returns the release store of the cluster at prefix.
func NewStore(kv clientv3.KV, prefix string) *Store {
	return &Store{kv: kv, keys: api.NewKeys(prefix)}
}

// Push stores r: its chunks first, then its manifest, which is never
// overwritten (a release is immutable; pushing the same content again is
// a no-op). It reports whether the release was new.
func (s *Store) Push(ctx context.Context, r *Release) (bool, error) {
	if err := r.Check(); err != nil {
		return false, err
	}
	mkey := s.keys.ReleaseKey(r.ID)
	if resp, err := s.kv.Get(ctx, mkey, clientv3.WithKeysOnly()); err != nil {
		return false, fmt.Errorf("read %s: %w", mkey, err)
	} else if len(resp.Kvs) > 0 {
		return false, nil
	}
	// One transaction per file's chunks, each under etcd's request limit.
	for i, f := range r.Files {
		var ops []clientv3.Op
		size := 0
		flush := func() error {
			if len(ops) == 0 {
				return nil
			}
			_, err := s.kv.Txn(ctx).Then(ops...).Commit()
			ops, size = nil, 0
			if err != nil {
				return fmt.Errorf("store release %s: file %s: %w", r.Short(), f.Path, err)
			}
			return nil
		}
		for j := range f.Chunks {
			part := f.Content[min(j*ChunkBytes, len(f.Content)):min((j+1)*ChunkBytes, len(f.Content))]
			if size+len(part) > 2*ChunkBytes || len(ops) == api.MaxTxnOps {
				if err := flush(); err != nil {
					return false, err
				}
			}
			ops = append(ops, clientv3.OpPut(s.keys.ReleaseChunkKey(r.ID, i, j), string(part)))
			size += len(part)
		}
		if err := flush(); err != nil {
			return false, err
		}
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	resp, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(mkey), "=", 0)).
		Then(clientv3.OpPut(mkey, string(raw))).Commit()
	if err != nil {
		return false, fmt.Errorf("store release %s: %w", r.Short(), err)
	}
	return resp.Succeeded, nil
}

// List returns every stored release's manifest (files without content),
// oldest first.
func (s *Store) List(ctx context.Context) ([]*Release, error) {
	resp, err := s.kv.Get(ctx, s.keys.ReleasesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.keys.ReleasesPrefix(), err)
	}
	var out []*Release
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), s.keys.ReleasesPrefix())
		if strings.Contains(id, "/") {
			continue // a chunk
		}
		r := &Release{}
		if err := json.Unmarshal(kv.Value, r); err != nil || r.ID != id {
			continue // not a manifest ccm wrote: never offered
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b *Release) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// Resolve returns the full ID of the stored release whose ID starts with
// prefix (at least 6 hex digits), or an error naming every match.
func (s *Store) Resolve(ctx context.Context, prefix string) (string, error) {
	if len(prefix) < 6 {
		return "", fmt.Errorf("release %q: give at least 6 digits of its id", prefix)
	}
	all, err := s.List(ctx)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, r := range all {
		if strings.HasPrefix(r.ID, prefix) {
			ids = append(ids, r.ID)
		}
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("release %s: %w", prefix, ErrNotFound)
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("release %s is ambiguous: %s", prefix, strings.Join(ids, ", "))
}

// Fetch reads release id whole and checks it (Release.Check): a chunk
// changed or missing in etcd is an error naming the file.
func (s *Store) Fetch(ctx context.Context, id string) (*Release, error) {
	resp, err := s.kv.Get(ctx, s.keys.ReleaseKey(id))
	if err != nil {
		return nil, etcdError{fmt.Errorf("read %s: %w", s.keys.ReleaseKey(id), err)}
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("release %s: %w", Short(id), ErrNotFound)
	}
	r := &Release{}
	if err := json.Unmarshal(resp.Kvs[0].Value, r); err != nil || r.ID != id {
		return nil, fmt.Errorf("release %s: its manifest is not one ccm wrote", Short(id))
	}
	chunks, err := s.kv.Get(ctx, s.keys.ReleaseKey(id)+"/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return nil, etcdError{fmt.Errorf("read release %s: %w", Short(id), err)}
	}
	parts := map[string][]byte{}
	for _, kv := range chunks.Kvs {
		parts[string(kv.Key)] = kv.Value
	}
	var errs []error
	for i := range r.Files {
		f := &r.Files[i]
		for j := range f.Chunks {
			part, ok := parts[s.keys.ReleaseChunkKey(id, i, j)]
			if !ok {
				errs = append(errs, fmt.Errorf("release %s: file %s: chunk %d is missing", r.Short(), f.Path, j))
				break
			}
			f.Content = append(f.Content, part...)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, r.Check()
}

// Open fetches release id, has verify (when set) check its signature, and
// stages it in a new temporary directory, returning it and the function
// that removes it.
func (s *Store) Open(ctx context.Context, id string, verify func(*Release) error) (string, func(), error) {
	r, err := s.Fetch(ctx, id)
	if err != nil {
		return "", nil, err
	}
	if verify != nil {
		if err := verify(r); err != nil {
			return "", nil, err
		}
	}
	tmp, err := os.MkdirTemp("", "ccm-release-*")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	dir := filepath.Join(tmp, r.Short())
	if err := r.Stage(dir); err != nil {
		cleanup()
		return "", nil, err
	}
	return dir, cleanup, nil
}
