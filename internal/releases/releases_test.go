package releases_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/releases"
)

// configDir is a configuration directory with a helper, a template large
// enough to take several chunks, and a dot file.
func configDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(p, text string, mode os.FileMode) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(text), mode))
	}
	write("web.yaml", "files: [{path: /x, template: big.tmpl}]\n", 0o644)
	write("templates/big.tmpl", strings.Repeat("server {}\n", 3*releases.ChunkBytes/10+7), 0o644)
	write("check/ok", "#!/bin/sh\nexit 0\n", 0o755)
	write(".git/HEAD", "ref: x\n", 0o644)
	return dir
}

func TestAReleaseRoundTripsThroughEtcdInChunks(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	r, err := releases.Pack(configDir(t))
	require.NoError(t, err)
	require.Len(t, r.Files, 3, "dot files are left out")
	assert.Equal(t, "check/ok", r.Files[0].Path)
	assert.Equal(t, 4, r.Files[1].Chunks, "a 1.5 MiB template takes 4 chunks")

	s := releases.NewStore(cli, "")
	fresh, err := s.Push(ctx, r)
	require.NoError(t, err)
	assert.Equal(t, releases.Pushed{Fresh: true}, fresh)
	again, err := s.Push(ctx, r)
	require.NoError(t, err)
	assert.Equal(t, releases.Pushed{}, again, "the same content is the same release, stored whole: nothing written")

	got, err := s.Fetch(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, r.ID, got.ID)
	dir := filepath.Join(t.TempDir(), "staged")
	require.NoError(t, got.Stage(dir))
	info, err := os.Stat(filepath.Join(dir, "check/ok"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), info.Mode().Perm(), "a helper stays executable")
	big, err := os.ReadFile(filepath.Join(dir, "templates/big.tmpl"))
	require.NoError(t, err)
	assert.Equal(t, r.Files[1].Content, big)

	id, err := s.Resolve(ctx, r.ID[:8])
	require.NoError(t, err)
	assert.Equal(t, r.ID, id)
	list, err := s.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Empty(t, list[0].Files[0].Content, "a listing carries no content")
}

// A chunk changed or removed in etcd is caught at fetch, naming the file.
func TestATamperedReleaseIsRefusedAtFetch(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	r, err := releases.Pack(configDir(t))
	require.NoError(t, err)
	s := releases.NewStore(cli, "")
	_, err = s.Push(ctx, r)
	require.NoError(t, err)
	k := api.NewKeys("")

	_, err = cli.Put(ctx, k.ReleaseChunkKey(r.ID, 1, 2), "server { evil }\n")
	require.NoError(t, err)
	_, err = s.Fetch(ctx, r.ID)
	assert.ErrorContains(t, err, "file templates/big.tmpl: its content does not match its digest")

	_, err = cli.Delete(ctx, k.ReleaseChunkKey(r.ID, 0, 0))
	require.NoError(t, err)
	_, err = s.Fetch(ctx, r.ID)
	assert.ErrorContains(t, err, "file check/ok: chunk 0 is missing")

	_, err = s.Fetch(ctx, strings.Repeat("0", 64))
	assert.ErrorIs(t, err, releases.ErrNotFound)
}

func TestAReleaseOverTheLimitIsRefusedWithItsSize(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "huge"), make([]byte, releases.MaxBytes+1), 0o644))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(dir, "link")))
	_, err := releases.Pack(dir)
	assert.ErrorContains(t, err, "link: not a regular file")
	assert.ErrorContains(t, err, "33554433 bytes in 1 files, over the release limit of 33554432 bytes")
}

func signer(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	s, err := ssh.NewSignerFromKey(priv)
	require.NoError(t, err)
	return s
}

func TestOnlyAReleaseSignedByAReleaseKeyVerifies(t *testing.T) {
	r, err := releases.Pack(configDir(t))
	require.NoError(t, err)
	good, other := signer(t), signer(t)
	trusted := func(k ssh.PublicKey) (string, bool) {
		if string(k.Marshal()) != string(good.PublicKey().Marshal()) {
			return "", false
		}
		return "ops@example", true
	}
	_, err = r.Verify(trusted)
	assert.ErrorContains(t, err, "is not signed, and release keys are configured")

	require.NoError(t, r.Sign(other, "intruder"))
	_, err = r.Verify(trusted)
	assert.ErrorContains(t, err, "which is not a release key")

	require.NoError(t, r.Sign(good, "ops@example"))
	by, err := r.Verify(trusted)
	require.NoError(t, err)
	assert.Equal(t, "ops@example", by)

	// A signature is for the content: another release does not inherit
	// it, under its own id or under the signed one.
	forged := *r
	forged.ID = strings.Repeat("1", 64)
	_, err = forged.Verify(trusted)
	assert.ErrorContains(t, err, "its manifest digests to")
	empty, err := releases.Pack(t.TempDir())
	require.NoError(t, err)
	empty.Signature = r.Signature
	_, err = empty.Verify(trusted)
	assert.ErrorContains(t, err, "does not hold")
}
