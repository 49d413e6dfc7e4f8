package releases_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/releases"
)

// A hand-written manifest that is not canonical is refused at push, at
// fetch and at verify, naming the path: an alias of another path, a path
// that is the directory of another, one listed twice or out of order.
func TestAManifestThatIsNotCanonicalIsRefusedNamingThePath(t *testing.T) {
	t.Parallel()
	file := func(p, text string) releases.File {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte(text), 0o644))
		r, err := releases.Pack(dir)
		require.NoError(t, err)
		f := r.Files[0]
		f.Path = p
		return f
	}
	for _, tc := range []struct {
		name  string
		files []releases.File
		want  string
	}{
		{"an alias of another path", []releases.File{file("sites.yaml", "good"), file("sites.yaml/.", "evil")}, `file "sites.yaml/.": not a clean relative path`},
		{"a dot segment", []releases.File{file("a/../sites.yaml", "evil")}, `file "a/../sites.yaml": not a clean relative path`},
		{"absolute", []releases.File{file("/etc/ccm/x.yaml", "evil")}, `file "/etc/ccm/x.yaml": not a clean relative path`},
		{"a dot file", []releases.File{file(".hidden/x.yaml", "evil")}, `segment ".hidden"`},
		{"a file that is the directory of another", []releases.File{file("check", "a"), file("check/x", "b")}, `file "check": is a file and the directory of another file`},
		{"listed twice", []releases.File{file("a.yaml", "a"), file("a.yaml", "b")}, `file "a.yaml": out of order or listed twice`},
		{"a newline", []releases.File{file("a\nb.yaml", "a")}, "a control character"},
	} {
		r := &releases.Release{Files: tc.files}
		r.ID = strings.Repeat("a", 64)
		err := r.Check()
		assert.ErrorContains(t, err, tc.want, tc.name)
		_, err = r.Verify(nil)
		assert.ErrorContains(t, err, tc.want, "%s: at verify", tc.name)
	}
}

// pushed packs a release of a configuration and a helper, and stores it.
func pushed(t *testing.T, s *releases.Store, helperMode os.FileMode) *releases.Release {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.yaml"), []byte("files: [{path: /x, content: a}]\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "check"), 0o777))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "check", "ok"), []byte("#!/bin/sh\nexit 0\n"), helperMode))
	require.NoError(t, os.Chmod(filepath.Join(dir, "check", "ok"), helperMode))
	r, err := releases.Pack(dir)
	require.NoError(t, err)
	_, err = s.Push(context.Background(), r)
	require.NoError(t, err)
	return r
}

// A file not readable by everyone looks like a secret: push refuses it,
// saying where secrets belong.
func TestAReleaseHoldsNoSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.yaml"), []byte("x"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "db.password"), []byte("hunter2"), 0o640))
	_, err := releases.Pack(dir)
	assert.ErrorContains(t, err, "db.password: mode 0640: not readable by everyone")
	assert.ErrorContains(t, err, "put them in objects, or send them as secret action parameters")
}

// Fetch reads only what the manifest names: a key it does not name, or a
// chunk longer than the manifest says, is an error; ccm release push of
// the same directory then rewrites the copy, and says so.
func TestFetchIsBoundedByTheManifestAndPushRepairsTheStoredCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	s := releases.NewStore(cli, "")
	r := pushed(t, s, 0o755)
	k := api.NewKeys("")

	_, err := cli.Put(ctx, k.ReleaseKey(r.ID)+"/000099/000000", strings.Repeat("x", 1000))
	require.NoError(t, err)
	_, err = s.Fetch(ctx, r.ID)
	assert.ErrorContains(t, err, "3 keys under /ccm/releases/"+r.ID+"/, and its manifest names 2 chunks")
	assert.True(t, releases.Damaged(err))

	_, err = cli.Put(ctx, k.ReleaseChunkKey(r.ID, 1, 0), strings.Repeat("x", 1<<20))
	require.NoError(t, err)
	_, err = s.Fetch(ctx, r.ID)
	assert.ErrorContains(t, err, "file web.yaml: its content does not match its digest (chunk 0 holds 1048576 bytes")

	p, err := s.Push(ctx, r)
	require.NoError(t, err)
	assert.False(t, p.Fresh)
	assert.ErrorContains(t, p.Repaired, "file web.yaml")
	_, err = s.Fetch(ctx, r.ID)
	require.NoError(t, err, "repaired: the extra key is gone too")

	_, err = cli.Delete(ctx, k.ReleaseKey(r.ID))
	require.NoError(t, err)
	_, err = s.Fetch(ctx, r.ID)
	assert.ErrorIs(t, err, releases.ErrNotFound)
	assert.True(t, releases.Damaged(err))
	p, err = s.Push(ctx, r)
	require.NoError(t, err)
	assert.True(t, p.Fresh, "a deleted release is stored again")
	_, err = s.Fetch(ctx, r.ID)
	require.NoError(t, err)
}

// Staged files are root's (the caller's) with normalised modes; a staged
// copy changed on disk is discarded and staged again, never loaded; a
// verified staged copy is used while the copy in etcd is broken.
func TestAStagedReleaseIsCheckedBeforeEachLoadAndOutlivesABrokenStoredCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cli := etcdtest.New(t, 1).Client(t)
	s := releases.NewStore(cli, "")
	r := pushed(t, s, 0o777)
	assert.Equal(t, os.FileMode(0o755), r.Files[0].Mode, "a 0777 helper is packed 0755")
	d, err := releases.OpenDir(filepath.Join(t.TempDir(), "releases"))
	require.NoError(t, err)

	st, err := d.Stage(ctx, s, r.ID, nil)
	require.NoError(t, err)
	require.NoError(t, st.Stored)
	helper := filepath.Join(st.Dir, "check", "ok")
	info, err := os.Stat(helper)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), info.Mode())
	info, err = os.Stat(filepath.Join(st.Dir, "check"))
	require.NoError(t, err)
	assert.Equal(t, os.ModeDir|0o755, info.Mode())

	// Changed on disk: discarded, staged again from etcd.
	require.NoError(t, os.Chmod(helper, 0o777))
	require.NoError(t, os.WriteFile(helper, []byte("#!/bin/sh\nevil\n"), 0o777))
	st, err = d.Stage(ctx, s, r.ID, nil)
	require.NoError(t, err)
	assert.ErrorContains(t, st.Discarded, "check/ok: mode -rwxrwxrwx, not -rwxr-xr-x")
	raw, err := os.ReadFile(helper)
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\nexit 0\n", string(raw))

	// The copy in etcd broken: the staged copy is used, and the reason
	// given.
	_, err = cli.Put(ctx, api.NewKeys("").ReleaseChunkKey(r.ID, 1, 0), "files: [{path: /x, content: evil}]\n")
	require.NoError(t, err)
	st, err = d.Stage(ctx, s, r.ID, nil)
	require.NoError(t, err)
	assert.ErrorContains(t, st.Stored, "file web.yaml: its content does not match its digest")
	assert.Nil(t, st.Discarded)

	// Broken on disk and in etcd: nothing to load.
	require.NoError(t, os.WriteFile(filepath.Join(st.Dir, "web.yaml"), []byte("evil"), 0o644))
	_, err = d.Stage(ctx, s, r.ID, nil)
	assert.True(t, releases.Damaged(err), "%v", err)
}

// The release directory is ccm's alone: one holding other files is
// refused, naming them; prune removes only what ccm staged.
func TestTheReleaseDirectoryIsCcmsAlone(t *testing.T) {
	t.Parallel()
	shared := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(shared, "notes.txt"), []byte("mine"), 0o644))
	_, err := releases.OpenDir(shared)
	assert.ErrorContains(t, err, "holds notes.txt, which ccm did not stage")

	// An older ccm's directory (staged trees only) is taken, and marked.
	old := t.TempDir()
	id := strings.Repeat("b", 64)
	require.NoError(t, os.Mkdir(filepath.Join(old, id), 0o755))
	d, err := releases.OpenDir(old)
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(old, releases.MarkerFile))

	// Marked, it keeps what it did not stage, and prunes what it did.
	require.NoError(t, os.WriteFile(filepath.Join(old, "notes.txt"), []byte("mine"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(old, id+".json"), []byte("{}"), 0o644))
	_, err = releases.OpenDir(old)
	require.NoError(t, err)
	require.NoError(t, d.Prune())
	entries, err := os.ReadDir(old)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{releases.MarkerFile, "notes.txt"}, names)
}

// BenchmarkFetch fetches a release of 200 small files and one of 8 MiB:
// one read per chunk the manifest names, against an embedded etcd.
func BenchmarkFetch(b *testing.B) {
	cli := etcdtest.New(b, 1).Client(b)
	s := releases.NewStore(cli, "")
	for _, tc := range []struct {
		name  string
		files int
		size  int
	}{{"200 files of 2 KiB", 200, 2 << 10}, {"one file of 8 MiB", 1, 8 << 20}} {
		dir := b.TempDir()
		for i := range tc.files {
			require.NoError(b, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d.tmpl", i)), make([]byte, tc.size), 0o644))
		}
		r, err := releases.Pack(dir)
		require.NoError(b, err)
		_, err = s.Push(context.Background(), r)
		require.NoError(b, err)
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Fetch(context.Background(), r.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
