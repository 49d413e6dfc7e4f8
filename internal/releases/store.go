package releases

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hiddeco/sshsig"
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

// Pushed is what a push wrote.
type Pushed struct {
	// Fresh: the release was not stored; it is now.
	Fresh bool
	// Repaired is what was wrong with the stored copy (a chunk changed,
	// missing or extra, a manifest not ccm's), which the push rewrote;
	// nil when nothing was.
	Repaired error
}

// Push stores r: its chunks first, then its manifest. A release is
// immutable: pushing the same content again writes nothing while the
// stored copy is whole, and rewrites it when it is not (Pushed.Repaired),
// keeping a stored manifest that lists the same files (its signature).
// A signed r also restores its signature: a stored manifest whose
// signature is missing, garbled or not by r's key is rewritten.
func (s *Store) Push(ctx context.Context, r *Release) (Pushed, error) {
	if err := r.Check(); err != nil {
		return Pushed{}, err
	}
	mkey := s.keys.ReleaseKey(r.ID)
	resp, err := s.kv.Get(ctx, mkey)
	if err != nil {
		return Pushed{}, fmt.Errorf("read %s: %w", mkey, err)
	}
	var out Pushed
	keepManifest := false
	if len(resp.Kvs) > 0 {
		stored, err := decodeManifest(resp.Kvs[0].Value)
		keepManifest = err == nil && stored.ID == r.ID && sameFiles(stored, r) && signedAs(stored, r)
		_, ferr := s.Fetch(ctx, r.ID)
		switch {
		case ferr == nil && keepManifest:
			return out, nil
		case ferr == nil:
			// Whole, but the signature this push carries is not the
			// stored one's: missing, garbled or another key's. Only the
			// manifest is rewritten.
			out.Repaired = fmt.Errorf("release %s: its stored manifest's signature is missing or not by the key this push signs with", r.Short())
		case Transient(ferr):
			return out, ferr
		default:
			out.Repaired = ferr
		}
		if ferr != nil {
			// Chunks the manifest does not name go too: a fetch refuses them.
			if _, err := s.kv.Delete(ctx, mkey+"/", clientv3.WithPrefix()); err != nil {
				return out, fmt.Errorf("repair release %s: %w", r.Short(), err)
			}
			if err := s.putChunks(ctx, r); err != nil {
				return out, err
			}
		}
	} else if err := s.putChunks(ctx, r); err != nil {
		return out, err
	}
	if keepManifest {
		return out, nil
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return out, err
	}
	seen := int64(0)
	if len(resp.Kvs) > 0 {
		seen = resp.Kvs[0].ModRevision
	}
	tresp, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(mkey), "=", seen)).
		Then(clientv3.OpPut(mkey, string(raw))).Commit()
	if err != nil {
		return out, fmt.Errorf("store release %s: %w", r.Short(), err)
	}
	if !tresp.Succeeded {
		return out, fmt.Errorf("store release %s: its manifest changed meanwhile: push again", r.Short())
	}
	out.Fresh = len(resp.Kvs) == 0
	return out, nil
}

// putChunks writes r's chunks: one transaction per file's chunks, each
// under etcd's request limit.
func (s *Store) putChunks(ctx context.Context, r *Release) error {
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
					return err
				}
			}
			ops = append(ops, clientv3.OpPut(s.keys.ReleaseChunkKey(r.ID, i, j), string(part)))
			size += len(part)
		}
		if err := flush(); err != nil {
			return err
		}
	}
	return nil
}

// signedAs reports whether the stored manifest carries a signature that
// holds by the key that signed r; true when r is unsigned (a push without
// --sign-key keeps whatever signature is stored).
func signedAs(stored, r *Release) bool {
	if r.Signature == "" {
		return true
	}
	want, err := sshsig.Unarmor([]byte(r.Signature))
	if err != nil || stored.Signature == "" {
		return false
	}
	sig, err := sshsig.Unarmor([]byte(stored.Signature))
	if err != nil || !bytes.Equal(sig.PublicKey.Marshal(), want.PublicKey.Marshal()) {
		return false
	}
	return sshsig.Verify(bytes.NewReader(SignedBytes(stored.ID)), sig, sig.PublicKey, sig.HashAlgorithm, SignatureNamespace) == nil
}

// sameFiles reports whether two manifests list the same files.
func sameFiles(a, b *Release) bool {
	return slices.EqualFunc(a.Files, b.Files, func(x, y File) bool {
		return x.Path == y.Path && x.Mode == y.Mode && x.Size == y.Size && x.SHA256 == y.SHA256 && x.Chunks == y.Chunks
	})
}

// List returns every stored release's manifest (files without content),
// oldest first. It reads the ids (keys only, skipping every release's
// chunks), then each manifest alone: whatever else is stored under
// releases/ is never read.
func (s *Store) List(ctx context.Context) ([]*Release, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Release
	for _, id := range ids {
		mkey := s.keys.ReleaseKey(id)
		resp, err := s.kv.Get(ctx, mkey)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", mkey, err)
		}
		if len(resp.Kvs) == 0 {
			continue // deleted meanwhile
		}
		r, err := decodeManifest(resp.Kvs[0].Value)
		if err != nil || r.ID != id {
			continue // not a manifest ccm wrote: never offered
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b *Release) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// idsPerRead is how many keys one read of the release ids asks for.
const idsPerRead = 256

// ids returns the id of every key <prefix>/releases/<id>, in key order,
// reading keys only, and past each name's children (<name>/...) at once.
func (s *Store) ids(ctx context.Context) ([]string, error) {
	prefix := s.keys.ReleasesPrefix()
	end := clientv3.GetPrefixRangeEnd(prefix)
	var ids []string
	for start := prefix; ; {
		resp, err := s.kv.Get(ctx, start, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(idsPerRead))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", prefix, err)
		}
		name := ""
		for _, kv := range resp.Kvs {
			rel := strings.TrimPrefix(string(kv.Key), prefix)
			var child bool
			name, _, child = strings.Cut(rel, "/")
			if !child && CheckID(name) == nil && (len(ids) == 0 || ids[len(ids)-1] != name) {
				ids = append(ids, name)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return ids, nil
		}
		// '0' follows '/': past <name> and everything under <name>/. No id
		// is skipped: one starts with a hex digit, never below '0'.
		start = prefix + name + "0"
	}
}

// Resolve returns the full ID of the stored release whose ID starts with
// prefix (at least 6 hex digits), or an error naming every match.
func (s *Store) Resolve(ctx context.Context, prefix string) (string, error) {
	if len(prefix) < 6 {
		return "", fmt.Errorf("release %q: give at least 6 digits of its id", prefix)
	}
	all, err := s.ids(ctx)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, id := range all {
		if strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
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

// Fetch reads release id and checks it (Release.Check). It reads
// only what the manifest names, one chunk at a time, once the manifest
// is known canonical: a chunk changed, missing, larger than the manifest
// says, or a key under the release that the manifest does not name, is
// an error naming it, and nothing more is read.
func (s *Store) Fetch(ctx context.Context, id string) (*Release, error) {
	r, err := s.fetch(ctx, id)
	switch {
	case err == nil:
		return r, nil
	case Transient(err):
		return nil, err
	}
	return nil, damagedError{err}
}

// damagedError marks a copy of a release in etcd that is not whole:
// deleted, or changed since it was pushed.
type damagedError struct{ err error }

func (e damagedError) Error() string { return e.err.Error() }
func (e damagedError) Unwrap() error { return e.err }

// Damaged reports whether err says that the copy of a release in etcd is
// not whole (deleted, a chunk or the manifest changed): the fault of
// whoever wrote it, not of a node that reads it.
func Damaged(err error) bool {
	var e damagedError
	return errors.As(err, &e)
}

func (s *Store) fetch(ctx context.Context, id string) (*Release, error) {
	mkey := s.keys.ReleaseKey(id)
	resp, err := s.kv.Get(ctx, mkey)
	if err != nil {
		return nil, etcdError{fmt.Errorf("read %s: %w", mkey, err)}
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("release %s: %w", Short(id), ErrNotFound)
	}
	r, err := decodeManifest(resp.Kvs[0].Value)
	if err != nil || r.ID != id {
		return nil, fmt.Errorf("release %s: its manifest is not one ccm wrote", Short(id))
	}
	if err := checkManifest(r); err != nil {
		return nil, err
	}
	rev, want := resp.Header.Revision, 0
	for _, f := range r.Files {
		want += f.Chunks
	}
	if err := s.readChunks(ctx, r, rev); err != nil {
		return nil, err
	}
	count, err := s.kv.Get(ctx, mkey+"/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(rev))
	if err != nil {
		return nil, etcdError{fmt.Errorf("read release %s: %w", Short(id), err)}
	}
	if count.Count != int64(want) {
		return nil, fmt.Errorf("release %s: %d keys under %s/, and its manifest names %d chunks", r.Short(), count.Count, mkey, want)
	}
	return r, r.Check()
}

// chunksPerRead is how many chunk keys one read asks for: a read holds
// at most this many values, each within etcd's request limit, whatever a
// writer stored under them.
const chunksPerRead = 16

// chunk is one chunk key a manifest names.
type chunk struct {
	file, n, size int
	key           string
}

// readChunks reads every chunk r's manifest names at rev, in key order,
// chunksPerRead at a time: each must be there, under exactly its key and
// exactly as long as the manifest says.
func (s *Store) readChunks(ctx context.Context, r *Release, rev int64) error {
	var all []chunk
	for i, f := range r.Files {
		r.Files[i].Content = make([]byte, 0, f.Size)
		for j := range f.Chunks {
			all = append(all, chunk{file: i, n: j, size: min(ChunkBytes, f.Size-j*ChunkBytes), key: s.keys.ReleaseChunkKey(r.ID, i, j)})
		}
	}
	for len(all) > 0 {
		batch := all[:min(chunksPerRead, len(all))]
		all = all[len(batch):]
		resp, err := s.kv.Get(ctx, batch[0].key, clientv3.WithRange(batch[len(batch)-1].key+"\x00"),
			clientv3.WithRev(rev), clientv3.WithLimit(int64(len(batch))))
		if err != nil {
			return etcdError{fmt.Errorf("read release %s: %w", r.Short(), err)}
		}
		for k, c := range batch {
			f := &r.Files[c.file]
			if k >= len(resp.Kvs) || string(resp.Kvs[k].Key) != c.key {
				return fmt.Errorf("release %s: file %s: chunk %d is missing", r.Short(), f.Path, c.n)
			}
			if v := resp.Kvs[k].Value; len(v) != c.size {
				return fmt.Errorf("release %s: file %s: its content does not match its digest (chunk %d holds %d bytes, not %d)",
					r.Short(), f.Path, c.n, len(v), c.size)
			}
			f.Content = append(f.Content, resp.Kvs[k].Value...)
		}
	}
	return nil
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
