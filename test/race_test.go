package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// raceIterations is how many runs race the symlink flipper; make soak
// raises it with CCM_SOAK_ITERATIONS.
func raceIterations() int { return max(2000, soakIterations()*100) }

// TestSymlinkSwapsMidRunNeverEscapeTheRoot: a customer owns a managed
// directory and, while runs go on, swaps a managed file for a symlink to a
// root-owned file (inside the root, as /etc/shadow is with --root /) and a
// managed directory for a symlink out of the root. Whatever the timing, no
// symlink is followed: nothing else is written, chmodded, chowned or
// removed.
func TestSymlinkSwapsMidRunNeverEscapeTheRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	secret := filepath.Join(root, "etc", "shadow")
	require.NoError(t, os.WriteFile(secret, []byte("do not touch\n"), 0o600))
	home := filepath.Join(root, "home", "alice")
	require.NoError(t, os.MkdirAll(filepath.Join(home, "conf"), 0o755))
	require.NoError(t, os.Chown(home, 65534, 65534)) // the customer's directory

	// Two versions of the configuration: the file's mode flips (a chmod
	// of the existing file), the other file's content changes (a write).
	var sets []*configs.Set
	for _, mode := range []string{"0644", "0640"} {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "home.yaml"), []byte(`subscribes: [users]
files:
  - {path: /home/alice/.forward, content: "alice@example.com\n", mode: "`+mode+`"}
  - {path: /home/alice/conf/app.conf, content: "{{ (index .Objects.users 0).Data.v }}\n", mode: "0644"}
`), 0o644))
		set, err := configs.Load(dir)
		require.NoError(t, err)
		sets = append(sets, set)
	}
	ap := applier.New(applier.Options{Root: root, StateDir: t.TempDir(), Node: render.Node{Name: "n"}})

	// The customer's loop: atomically exchange the file and the directory
	// with symlinks that leave the root, and back (renameat2
	// RENAME_EXCHANGE: at every instant the path is one or the other).
	fwd, conf := filepath.Join(home, ".forward"), filepath.Join(home, "conf")
	require.NoError(t, os.WriteFile(fwd, []byte("alice@example.com\n"), 0o644))
	require.NoError(t, os.Symlink(secret, fwd+".link"))
	require.NoError(t, os.Symlink(outside, conf+".link"))
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			for _, p := range []string{fwd, conf} {
				_ = unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, p+".link", unix.RENAME_EXCHANGE)
			}
		}
	}()
	var ran, failed int
	for i := 0; i < raceIterations(); i++ {
		b := objects.NewBuilder("/ccm", int64(i+1), nil)
		b.Add("/ccm/objects/users/alice", []byte(fmt.Sprintf(`{"v":"v%d"}`, i)), int64(i+1))
		r := ap.Run(context.Background(), runkind.Full, sets[i%2], b.Snapshot(), []string{"home"})
		ran++
		if r.Failed() {
			failed++ // refusing is fine; escaping is not
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d runs raced the symlink flipper, %d refused", ran, failed)

	b, err := os.ReadFile(secret)
	require.NoError(t, err)
	assert.Equal(t, "do not touch\n", string(b), "the file a symlink pointed to is unchanged")
	fi, err := os.Stat(secret)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "and not chmodded")
	entries, err := os.ReadDir(outside)
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing was written outside the root")
}
