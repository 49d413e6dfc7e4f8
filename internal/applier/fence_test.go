package applier_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// fenceAfter is a fence that lets n steps through, then refuses every one.
func fenceAfter(n int) (func() error, *int) {
	calls := 0
	return func() error {
		calls++
		if calls > n {
			return errors.New("cluster lock lost: the lease may have expired")
		}
		return nil
	}, &calls
}

// A node that lost the lock stops before its next side effect: before a
// rename, the run is aborted (not failed) and every file it renamed is
// put back; past validate, the files stay and on_change is still owed,
// for the next run that holds the lock.
func TestAFenceStopsTheRunBeforeTheNextRenameOrCommand(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	f := newFixture(t, map[string]string{"web.yaml": `files:
  - {path: /a.conf, content: "new a"}
  - {path: /b.conf, content: "new b"}
validate: [true]
on_change:
  - [sh, -c, 'echo run >> "$0"', ` + strconv.Quote(log) + `]
`})
	require.NoError(t, os.WriteFile(f.path("/a.conf"), []byte("old a"), 0o644))
	require.NoError(t, os.WriteFile(f.path("/b.conf"), []byte("old b"), 0o644))
	names := []string{"web"}

	// The first rename passes, the second is refused.
	fence, calls := fenceAfter(1)
	r := f.applier.Run(applier.WithFence(context.Background(), fence), runkind.Full, f.set, f.snap(), names)
	assert.True(t, r.Aborted, "a lost lock aborts the run")
	assert.False(t, r.Failed(), "it is not the configuration's failure: no flag")
	assert.Equal(t, applier.Aborted, r.Outcomes[0].Result)
	assert.Contains(t, r.Outcomes[0].Error, "before writing /b.conf")
	assert.Equal(t, "old a", f.read("/a.conf"), "the file renamed before is restored")
	assert.Equal(t, "old b", f.read("/b.conf"))
	assert.Equal(t, 2, *calls)
	assert.NoFileExists(t, log)

	// Renames and validate pass; on_change is refused.
	fence, _ = fenceAfter(3)
	r = f.applier.Run(applier.WithFence(context.Background(), fence), runkind.Full, f.set, f.snap(), names)
	assert.True(t, r.Aborted)
	assert.Contains(t, r.Outcomes[0].Error, "before on_change")
	assert.Equal(t, "new a", f.read("/a.conf"), "validated files stay")
	assert.NoFileExists(t, log, "no on_change without the lock")
	assert.True(t, f.plan("web").PendingOnChange, "the on_change is still owed")

	r = f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), names)
	require.NoError(t, r.Err)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	assert.Equal(t, "run\n", string(b), "the next run with the lock runs it")
}
