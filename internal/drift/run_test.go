package drift_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/drift"
	"github.com/ccm-dev/ccm/internal/leaktest"
)

// TestMain fails the package when a test leaves a goroutine running.
func TestMain(m *testing.M) { leaktest.Main(m) }

// standIn is a Repairer that records what the watcher asks of it: the
// watcher's own behaviour (watches, batches) is what these tests read;
// the repair itself is tested with a real agent (internal/agent).
type standIn struct {
	mu      sync.Mutex
	managed applier.Managed
	asked   []string
}

func (s *standIn) Managed() applier.Managed {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.managed
}

func (s *standIn) Repair(_ context.Context, reals []string, _ bool) *applier.RepairReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, reals...)
	return &applier.RepairReport{}
}

func (s *standIn) set(paths ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.managed = applier.Managed{Paths: slices.Sorted(slices.Values(paths)), Generation: s.managed.Generation + 1}
}

func (s *standIn) wasAsked(p string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.asked, p)
}

func (s *standIn) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = nil
}

func run(t *testing.T, rep drift.Repairer) *drift.Watcher {
	t.Helper()
	w := drift.New(rep, drift.Options{Mode: drift.Repair, Quiet: time.Millisecond, Refresh: 5 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return w
}

// A directory that no longer holds a managed path loses its watch: a
// deploy does not leak watches.
func TestWatchesFollowTheManagedDirectories(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "b"} {
		require.NoError(t, os.Mkdir(filepath.Join(root, d), 0o755))
	}
	rep := &standIn{}
	rep.set(filepath.Join(root, "a/1"), filepath.Join(root, "a/2"), filepath.Join(root, "b/1"))
	w := run(t, rep)
	require.Eventually(t, func() bool { return w.Status().Watches == 2 }, 10*time.Second, time.Millisecond, "one watch per directory")
	rep.set(filepath.Join(root, "a/1"))
	require.Eventually(t, func() bool { return w.Status().Watches == 1 }, 10*time.Second, time.Millisecond, "b's watch is dropped")
}

// A watched directory deleted hands its paths on; once it is back, it is
// watched again and its paths are checked, since what happened meanwhile
// had no watch to report it.
func TestADeletedDirectoryIsWatchedAgainOnceBack(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sites")
	require.NoError(t, os.Mkdir(dir, 0o755))
	file := filepath.Join(dir, "a.conf")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	rep := &standIn{}
	rep.set(file)
	w := run(t, rep)
	require.Eventually(t, func() bool { return w.Status().Watches == 1 }, 10*time.Second, time.Millisecond)
	require.NoError(t, os.RemoveAll(dir))
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "the deleted directory's path")
	require.Eventually(t, func() bool { return w.Status().Watches == 0 }, 10*time.Second, time.Millisecond)
	rep.forget()
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.Eventually(t, func() bool { return w.Status().Watches == 1 && rep.wasAsked(file) }, 10*time.Second, time.Millisecond,
		"watched again, and checked")
	rep.forget()
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o644))
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "the new watch reports")
	foreign := filepath.Join(dir, "local.conf")
	require.NoError(t, os.WriteFile(foreign, []byte("x"), 0o644))
	rep.forget()
	require.NoError(t, os.WriteFile(file, []byte("y"), 0o644)) // after the foreign file: its events came first
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond)
	assert.False(t, rep.wasAsked(foreign), "a foreign file is never handed on")
}

// Without an inotify instance (fs.inotify.max_user_instances), every
// managed directory is scanned.
func TestWithoutAnInstanceEverythingIsScanned(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "a.conf")
	rep := &standIn{}
	rep.set(file)
	w := drift.New(rep, drift.Options{Mode: drift.Repair, Quiet: time.Millisecond, Refresh: 5 * time.Millisecond, ScanEvery: 10 * time.Millisecond,
		Faults: drift.Faults{Init: unix.EMFILE}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "the scan checks the path")
	s := w.Status()
	assert.Equal(t, 0, s.Watches)
	assert.Equal(t, 1, s.Scanned)
}

// A parent of a watched directory moved away, and the directory made
// again in its place (`mv x x.old && mkdir -p x/y`), does not blind the
// watcher: the watch followed the old inode, and is put on the new one.
func TestADirectoryMovedWithItsParentIsWatchedAgain(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "x", "y")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	file := filepath.Join(dir, "a.conf")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	rep := &standIn{}
	rep.set(file)
	w := drift.New(rep, drift.Options{Mode: drift.Repair, Quiet: time.Millisecond, Refresh: 5 * time.Millisecond, ScanEvery: 10 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	require.Eventually(t, func() bool { return w.Status().Watches == 1 }, 10*time.Second, time.Millisecond)

	require.NoError(t, os.Rename(filepath.Join(root, "x"), filepath.Join(root, "x.old")))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "the moved directory's path is checked")
	require.Eventually(t, func() bool { return w.Status().Watches == 1 && w.Status().Scanned == 0 }, 10*time.Second, time.Millisecond)
	rep.forget()
	require.NoError(t, os.WriteFile(file, []byte("hand\n"), 0o644))
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "a write in the new directory is seen")
}

// A flood that overflows the kernel's queue again and again makes one
// full check per FullEvery, not one per batch.
func TestOverflowsMakeAtMostOneFullCheckPerInterval(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "a.conf")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	flood := filepath.Join(root, "flood")
	rep := &standIn{}
	rep.set(file)
	w := drift.New(rep, drift.Options{Mode: drift.Repair, Quiet: time.Millisecond, Refresh: 5 * time.Millisecond, FullEvery: time.Hour,
		Faults: drift.Faults{Overflow: func(real string) bool { return real == flood }}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	require.Eventually(t, func() bool { return w.Status().Watches == 1 }, 10*time.Second, time.Millisecond)
	for i := 0; w.Status().Overflows < 20; i++ {
		require.Less(t, i, 100000, "overflows are reported")
		require.NoError(t, os.WriteFile(flood, []byte("x"), 0o644))
	}
	require.Eventually(t, func() bool { return rep.wasAsked(file) }, 10*time.Second, time.Millisecond, "the first overflow checks everything")
	assert.Equal(t, 1, w.Status().FullChecks, "one full check for 20 overflows within FullEvery")
}
