package releases_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/releases"
)

// The release writer rewrites a signed release's stored manifest: its
// signature stripped, garbled, or another key's. A node without a staged
// copy sees damage to the stored copy (Damaged: retried, never the
// failure flag), a node with one keeps running it, and a push of the same
// directory with the signing key restores the signature.
func TestAStrippedSignatureIsDamageThatASignedPushRepairs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	s := releases.NewStore(cli, "")
	good, other := signer(t), signer(t)
	trusted := func(k ssh.PublicKey) (string, bool) {
		if string(k.Marshal()) != string(good.PublicKey().Marshal()) {
			return "", false
		}
		return "ops", true
	}
	verify := releases.Verifier(trusted)
	r, err := releases.Pack(configDir(t))
	require.NoError(t, err)
	require.NoError(t, r.Sign(good, "ops"))
	_, err = s.Push(ctx, r)
	require.NoError(t, err)
	held, err := releases.OpenDir(filepath.Join(t.TempDir(), "held"))
	require.NoError(t, err)
	_, err = held.Stage(ctx, s, r.ID, verify)
	require.NoError(t, err)

	byOther := *r
	require.NoError(t, byOther.Sign(other, "intruder"))
	for _, tc := range []struct{ name, signature, want string }{
		{"stripped", "", "is not signed"},
		{"garbled", "-----BEGIN SSH SIGNATURE-----\ngarbage\n-----END SSH SIGNATURE-----\n", "signature"},
		{"another key's", byOther.Signature, "which is not a release key"},
	} {
		forged := *r
		forged.Signature = tc.signature
		raw, err := json.Marshal(&forged)
		require.NoError(t, err)
		_, err = cli.Put(ctx, api.NewKeys("").ReleaseKey(r.ID), string(raw))
		require.NoError(t, err)

		fresh, err := releases.OpenDir(filepath.Join(t.TempDir(), "fresh"))
		require.NoError(t, err)
		_, err = fresh.Stage(ctx, s, r.ID, verify)
		assert.ErrorContains(t, err, tc.want, tc.name)
		assert.True(t, releases.Damaged(err), "%s: a node without a staged copy: damage to the stored copy, not its failure: %v", tc.name, err)

		st, err := held.Stage(ctx, s, r.ID, verify)
		require.NoError(t, err, tc.name)
		assert.ErrorContains(t, st.Stored, tc.want, tc.name)

		p, err := s.Push(ctx, r)
		require.NoError(t, err, tc.name)
		assert.ErrorContains(t, p.Repaired, "signature is missing or not by the key this push signs with", tc.name)
		got, err := s.Fetch(ctx, r.ID)
		require.NoError(t, err, tc.name)
		_, err = got.Verify(trusted)
		require.NoError(t, err, "%s: the push restored the signature", tc.name)
		p, err = s.Push(ctx, r)
		require.NoError(t, err)
		assert.Equal(t, releases.Pushed{}, p, "%s: whole and signed: nothing written", tc.name)
	}
}

// A path of many segments (the review's "a/"×600000+"a" made the check
// quadratic, for minutes) is refused by its length; a segment over
// NAME_MAX and a path of too many segments are refused too, at check
// and at fetch, naming the limit.
func TestAManifestPathOverTheLimitsIsRefusedCheaply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	s := releases.NewStore(cli, "")
	for _, tc := range []struct{ name, path, want string }{
		{"the review's path", strings.Repeat("a/", 600000) + "a", "1200001 bytes, over the path limit of 4096"},
		{"a long path", strings.Repeat("a/", 2100) + "a", "4201 bytes, over the path limit of 4096"},
		{"a long segment", strings.Repeat("a", 256), "a segment of 256 bytes, over the limit of 255"},
		{"deep", strings.Repeat("a/", 64) + "a", "65 segments, over the limit of 64"},
	} {
		r := &releases.Release{Files: []releases.File{{Path: tc.path, Mode: 0o644, Size: 0, Chunks: 1,
			SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}}
		r.ID = releases.Digest(r.Files)
		assert.ErrorContains(t, r.Check(), tc.want, tc.name)
		raw, err := json.Marshal(r)
		require.NoError(t, err)
		if len(raw) < 1<<20 {
			_, err = cli.Put(ctx, api.NewKeys("").ReleaseKey(r.ID), string(raw))
			require.NoError(t, err)
			_, err = s.Fetch(ctx, r.ID)
			assert.ErrorContains(t, err, tc.want, "%s: at fetch", tc.name)
		}
	}
}

// BenchmarkCheckManifest checks the largest manifest the limits allow:
// MaxFiles paths of MaxSegments-1 segments, each path near MaxPathBytes.
func BenchmarkCheckManifest(b *testing.B) {
	r := &releases.Release{}
	seg := strings.Repeat("s", 60)
	for i := range releases.MaxFiles {
		p := strings.Repeat(seg+"/", releases.MaxSegments-2) + fmt.Sprintf("f%05d", i)
		r.Files = append(r.Files, releases.File{Path: p, Mode: 0o644, Chunks: 1,
			SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"})
	}
	r.ID = releases.Digest(r.Files)
	for b.Loop() {
		if err := r.Check(); err != nil {
			b.Fatal(err)
		}
	}
}

// An error names a hostile path by its first bytes, not all of them.
func TestAnErrorNamesALongPathShortly(t *testing.T) {
	t.Parallel()
	r := &releases.Release{Files: []releases.File{{Path: strings.Repeat("a/", 600000) + "a", Mode: 0o644, Chunks: 1}}}
	r.ID = releases.Digest(r.Files)
	err := r.Check()
	require.Error(t, err)
	assert.Less(t, len(err.Error()), 1000)
}

// A release directory under a directory another user could change is
// refused, as sshd's StrictModes would: that user could rename it away
// and plant a tree whose commands ccm runs by path. A sticky directory
// (/tmp) and a symlink to a safe place are fine; a symlink into an unsafe
// one is not.
func TestAReleaseDirectoryUnderAnotherUsersDirectoryIsRefused(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns a directory to nobody")
	}
	base := t.TempDir()
	mkdir := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		require.NoError(t, os.Mkdir(p, 0o755))
		require.NoError(t, os.Chmod(p, mode))
		require.NoError(t, os.Chown(p, uid, uid))
		return p
	}
	nob := mkdir("nob", 0o755, 65534)
	ww := mkdir("ww", 0o777, 0)
	sticky := mkdir("sticky", 0o777|os.ModeSticky, 0)
	safe := mkdir("safe", 0o755, 0)
	require.NoError(t, os.Symlink(nob, filepath.Join(base, "link-nob")))
	require.NoError(t, os.Symlink(safe, filepath.Join(base, "link-safe")))

	_, err := releases.OpenDir(filepath.Join(nob, "rd"))
	assert.ErrorContains(t, err, nob+" above it is owned by uid 65534, not by root")
	_, err = releases.OpenDir(filepath.Join(nob, "deeper", "rd"))
	assert.ErrorContains(t, err, nob+" above it is owned by uid 65534")
	_, err = releases.OpenDir(filepath.Join(ww, "rd"))
	assert.ErrorContains(t, err, ww+" above it is writable by others")
	_, err = releases.OpenDir(filepath.Join(base, "link-nob", "rd"))
	assert.ErrorContains(t, err, nob+" above it is owned by uid 65534", "the symlink's target is checked")
	_, err = releases.OpenDir(filepath.Join(sticky, "rd"))
	assert.NoError(t, err)
	_, err = releases.OpenDir(filepath.Join(base, "link-safe", "rd"))
	assert.NoError(t, err)
}

// countingKV counts the bytes of the values etcd returns to Gets.
type countingKV struct {
	clientv3.KV
	bytes atomic.Int64
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := c.KV.Get(ctx, key, opts...)
	if err == nil {
		for _, kv := range resp.Kvs {
			c.bytes.Add(int64(len(kv.Value)))
		}
	}
	return resp, err
}

// Listing releases reads their manifests, never their chunks nor what a
// release writer stored beside them (the review's 60 × 1 MB junk keys
// made ccm release list, and every command that resolves an id, read
// them all).
func TestListingReleasesReadsOnlyTheirManifests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	kv := &countingKV{KV: cli}
	s := releases.NewStore(kv, "")
	r, err := releases.Pack(configDir(t)) // chunks of 1.5 MiB in all
	require.NoError(t, err)
	_, err = s.Push(ctx, r)
	require.NoError(t, err)
	k := api.NewKeys("")
	for i := range 3 {
		_, err = cli.Put(ctx, fmt.Sprintf("%s/junk/%d", k.ReleaseKey(r.ID), i), strings.Repeat("x", 1<<20))
		require.NoError(t, err)
		_, err = cli.Put(ctx, fmt.Sprintf("%sjunk%d/x", k.ReleasesPrefix(), i), strings.Repeat("x", 1<<20))
		require.NoError(t, err)
	}
	other := pushed(t, s, 0o755)
	many := t.TempDir() // more chunk keys than one read of ids asks for
	for i := range 300 {
		require.NoError(t, os.WriteFile(filepath.Join(many, fmt.Sprintf("f%03d", i)), []byte{byte(i)}, 0o644))
	}
	third, err := releases.Pack(many)
	require.NoError(t, err)
	_, err = s.Push(ctx, third)
	require.NoError(t, err)

	kv.bytes.Store(0)
	all, err := s.List(ctx)
	require.NoError(t, err)
	var ids []string
	for _, x := range all {
		ids = append(ids, x.ID)
	}
	assert.ElementsMatch(t, []string{r.ID, other.ID, third.ID}, ids)
	assert.Less(t, kv.bytes.Load(), int64(64<<10), "only the manifests are read")

	kv.bytes.Store(0)
	id, err := s.Resolve(ctx, r.ID[:8])
	require.NoError(t, err)
	assert.Equal(t, r.ID, id)
	assert.Zero(t, kv.bytes.Load(), "resolving an id reads keys only")
}

// ccm object put reads the schemas of the promoted release only once it
// verifies with the release keys, as the nodes would load it.
func TestSchemasAreReadOnlyFromAVerifiedRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	s := releases.NewStore(cli, "")
	good := signer(t)
	verify := releases.Verifier(func(k ssh.PublicKey) (string, bool) {
		if string(k.Marshal()) != string(good.PublicKey().Marshal()) {
			return "", false
		}
		return "ops", true
	})
	r := pushed(t, s, 0o755)
	_, err := s.Schemas(verify)(ctx, r.ID)
	assert.ErrorContains(t, err, "is not signed, and release keys are configured")
	_, err = s.Schemas(nil)(ctx, r.ID)
	assert.NoError(t, err, "without keys, etcd's RBAC alone")
	require.NoError(t, r.Sign(good, "ops"))
	_, err = s.Push(ctx, r)
	require.NoError(t, err)
	_, err = s.Schemas(verify)(ctx, r.ID)
	assert.NoError(t, err)
}
