package releases_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/releases"
)

// stored pushes a release of one configuration whose file says text.
func stored(t *testing.T, s *releases.Store, text string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.yaml"), []byte("files: [{path: /x, content: "+text+"}]\n"), 0o644))
	r, err := releases.Pack(dir)
	require.NoError(t, err)
	_, err = s.Push(context.Background(), r)
	require.NoError(t, err)
	return r.ID
}

// Promotes keep the history newest first; a rollback walks it back one
// release at a time; a promote from a stale read of the pointer, or
// after an object changed since the caller checked them, writes nothing.
func TestPromoteKeepsTheHistoryRollbackWalksItAndAStaleReadWritesNothing(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	s := releases.NewStore(cli, "")
	a, b, c := stored(t, s, "a"), stored(t, s, "b"), stored(t, s, "c")

	cur, rev, err := s.Current(ctx)
	require.NoError(t, err)
	assert.Nil(t, cur, "none promoted")
	assert.Zero(t, rev)
	for _, id := range []string{a, b, c} {
		cur, rev, err = s.Current(ctx)
		require.NoError(t, err)
		_, err = s.Promote(ctx, cur, rev, releases.Promotion{ID: id, By: "ops"})
		require.NoError(t, err)
	}
	cur, rev, err = s.Current(ctx)
	require.NoError(t, err)
	assert.Equal(t, c, cur.ID)
	assert.Equal(t, []string{b, a}, cur.History)

	_, err = s.Promote(ctx, nil, 0, releases.Promotion{ID: a, By: "late"})
	require.ErrorIs(t, err, releases.ErrMoved, "a promote from a stale read")
	_, err = s.Promote(ctx, cur, rev, releases.Promotion{ID: "0000000000000000000000000000000000000000000000000000000000000000"})
	require.ErrorIs(t, err, releases.ErrNotFound, "only a stored release")

	resp, err := cli.Put(ctx, "/ccm/objects/sites/x", `{}`)
	require.NoError(t, err)
	_, err = s.Promote(ctx, cur, rev, releases.Promotion{ID: a, ObjectsAt: resp.Header.Revision - 1})
	require.ErrorIs(t, err, releases.ErrMoved, "an object written after the check")
	_, err = cli.Put(ctx, "/ccm/objects/sites/x", `{"v": 1}`)
	require.NoError(t, err)
	_, err = s.Promote(ctx, cur, rev, releases.Promotion{ID: a, ObjectsAt: resp.Header.Revision})
	require.ErrorIs(t, err, releases.ErrMoved, "an object rewritten after the check")

	p, err := s.Rollback(ctx, "ops")
	require.NoError(t, err)
	assert.Equal(t, b, p.ID)
	assert.Equal(t, []string{a}, p.History)
	assert.Equal(t, "rollback from "+releases.Short(c), p.Reason)
	p, err = s.Rollback(ctx, "ops")
	require.NoError(t, err)
	assert.Equal(t, a, p.ID)
	_, err = s.Rollback(ctx, "ops")
	require.ErrorIs(t, err, releases.ErrNoHistory)
}

// A pointer value ccm did not write is an error naming the key, never a
// release.
func TestAPointerCCMDidNotWriteIsRefused(t *testing.T) {
	for _, raw := range []string{`not json`, `{"id": "../../etc"}`, `{}`} {
		_, err := releases.DecodePointer("/ccm/release", []byte(raw))
		require.Error(t, err, raw)
		assert.Contains(t, err.Error(), "/ccm/release: ")
	}
}
