package applier_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
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

// A holder cut off from etcd in the middle of its on_change: the command
// already ran when the fence started refusing. Before, it ran on to its
// end beside the next holder (the node harness saw two nodes' on_change
// overlap by 7 s). Now the fence is asked while it runs, and its process
// group is killed; the on_change stays owed.
func TestAFenceThatRefusesDuringACommandKillsIt(t *testing.T) {
	dir := t.TempDir()
	started, pidFile := filepath.Join(dir, "started"), filepath.Join(dir, "pid")
	f := newFixture(t, map[string]string{"web.yaml": `files:
  - {path: /a.conf, content: "new a"}
on_change:
  - [sh, -c, 'echo $$ > "$0"; touch "$1"; exec sleep 60', ` + strconv.Quote(pidFile) + `, ` + strconv.Quote(started) + `]
timeout: 2m
`})
	fence := func() error {
		if _, err := os.Stat(started); err == nil {
			return errors.New("cluster lock lost: the lease may have expired")
		}
		return nil
	}
	r := f.applier.Run(applier.WithFence(context.Background(), fence), runkind.Full, f.set, f.snap(), []string{"web"})
	assert.True(t, r.Aborted, "a lock lost during on_change aborts the run")
	assert.False(t, r.Failed(), "it is not the configuration's failure: no flag")
	assert.Contains(t, r.Outcomes[0].Error, "during sh -c")
	assert.True(t, f.plan("web").PendingOnChange, "the on_change is still owed")
	raw, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(string(raw[:len(raw)-1]))
	require.NoError(t, err)
	assert.Error(t, syscall.Kill(pid, 0), "the command's process is gone")
}
