package applier_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/ratelog"
	"github.com/ccm-dev/ccm/internal/render"
)

// custConf manages files in a customer's home: what stands at their paths
// is the customer's to choose. validate records the size of the journal
// it runs beside in %[2]s.size, and refuses while %[2]s.refuse exists.
const custConf = `max_file_size: 4KiB
directories:
  - {path: /home/cust/app, mode: "0755"}
files:
  - {path: /home/cust/app.conf, content: "managed\n", mode: "0644", owner: root, group: root}
  - {path: /home/cust/.ssh/authorized_keys, content: "ssh-ed25519 AAAA\n", mode: "0600"}
validate: [sh, -c, 'stat -c %%s "$0"/journal/cust.json > "$1.size"; test ! -e "$1.refuse"', %[1]s, %[2]s]
`

// custFixture is a fixture with custConf applied; mark is validate's
// record.
func custFixture(t *testing.T) (f *fixture, mark string) {
	t.Helper()
	f = newFixture(t, map[string]string{"cust.yaml": "files: [{path: /placeholder, content: x}]\n"})
	mark = filepath.Join(t.TempDir(), "validate")
	conf := fmt.Sprintf(custConf, strconv.Quote(filepath.Join(f.tmp, "state")), strconv.Quote(mark))
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "cust.yaml"), []byte(conf), 0o644))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set
	_, err = f.apply("cust")
	require.NoError(t, err)
	return f, mark
}

// A sparse file far larger than max_file_size at a managed path is neither
// read nor journaled (the agent once read 2 GB of it into memory and the
// journal); it is replaced, and a rollback does not bring it back.
func TestAnOversizedFileAtAManagedPathIsReplacedWithoutReadingIt(t *testing.T) {
	t.Parallel()
	f, mark := custFixture(t)
	conf := f.path("/home/cust/app.conf")
	require.NoError(t, os.Truncate(conf, 1<<20)) // sparse: 1 MiB of holes
	require.NoError(t, os.WriteFile(mark+".refuse", nil, 0o644))
	p := f.plan("cust")
	require.Len(t, p.Changes, 1)
	assert.Contains(t, p.Changes[0].Diff(), "larger than max_file_size; not read")

	_, err := f.apply("cust")
	require.Error(t, err, "validate refuses")
	size, err := os.ReadFile(mark + ".size")
	require.NoError(t, err)
	n, err := strconv.Atoi(strings.TrimSpace(string(size)))
	require.NoError(t, err)
	assert.Less(t, n, 16<<10, "the journal holds no copy of the oversized file")
	assert.NoFileExists(t, conf, "rolled back: ccm's file removed, the oversized one not put back")

	require.NoError(t, os.Truncate(mark+".refuse", 0))
	require.NoError(t, os.Remove(mark+".refuse"))
	require.NoError(t, os.Truncate(f.path("/home/cust/.ssh/authorized_keys"), 1<<20))
	_, err = f.apply("cust")
	require.NoError(t, err)
	assert.Equal(t, "ssh-ed25519 AAAA\n", f.read("/home/cust/.ssh/authorized_keys"))
	assert.Equal(t, "managed\n", f.read("/home/cust/app.conf"))
}

// Whatever a customer puts at a managed file's path, or at its parent
// directory's, is moved aside (never followed, never deleted) and the file
// written: one customer cannot fail the configuration for every node.
func TestANonRegularEntryAtAManagedFilePathIsMovedAside(t *testing.T) {
	t.Parallel()
	for name, replace := range map[string]func(t *testing.T, p, elsewhere string) (aside string){
		"fifo": func(t *testing.T, p, _ string) string {
			require.NoError(t, unix.Mkfifo(p, 0o644))
			return p
		},
		"symlink": func(t *testing.T, p, elsewhere string) string {
			require.NoError(t, os.Symlink(elsewhere, p))
			return p
		},
		"directory": func(t *testing.T, p, _ string) string {
			require.NoError(t, os.Mkdir(p, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(p, "x"), nil, 0o644))
			return p
		},
		"parent is a file": func(t *testing.T, p, _ string) string {
			if filepath.Base(p) != "authorized_keys" {
				require.NoError(t, unix.Mkfifo(p, 0o644))
				return p
			}
			require.NoError(t, os.Remove(filepath.Dir(p)))
			require.NoError(t, os.WriteFile(filepath.Dir(p), []byte("mine\n"), 0o644))
			return filepath.Dir(p)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f, _ := custFixture(t)
			elsewhere := filepath.Join(t.TempDir(), "target")
			require.NoError(t, os.WriteFile(elsewhere, []byte("not ccm's\n"), 0o600))
			paths := []string{"/home/cust/app.conf", "/home/cust/.ssh/authorized_keys"}
			var moved []string
			for _, p := range paths {
				require.NoError(t, os.Remove(f.path(p)))
				moved = append(moved, replace(t, f.path(p), elsewhere))
			}
			if name == "fifo" {
				var out strings.Builder
				applier.WritePlans(&out, []*applier.Plan{f.plan("cust")}, false)
				assert.Contains(t, out.String(), "* move aside /home/cust/app.conf: it is a FIFO, not a regular file")
			}
			_, err := f.apply("cust")
			require.NoError(t, err)
			assert.Equal(t, "managed\n", f.read("/home/cust/app.conf"))
			assert.Equal(t, "ssh-ed25519 AAAA\n", f.read("/home/cust/.ssh/authorized_keys"))
			for _, p := range paths {
				st, err := os.Lstat(f.path(p))
				require.NoError(t, err)
				assert.True(t, st.Mode().IsRegular(), "%s is a regular file again", p)
			}
			target, err := os.ReadFile(elsewhere)
			require.NoError(t, err)
			assert.Equal(t, "not ccm's\n", string(target), "a symlink is never followed")
			for _, m := range moved {
				aside, err := filepath.Glob(m + ".ccm-displaced-*")
				require.NoError(t, err)
				assert.Len(t, aside, 1, "what stood at %s is kept aside", m)
			}
		})
	}
}

// A customer's file with the managed content, hard-linked to a name they
// keep, is replaced by a fresh root-owned copy: ccm never chowns or
// chmods the customer's inode in place.
func TestAWrongOwnerIsFixedWithAFreshCopyNeverInPlace(t *testing.T) {
	t.Parallel()
	f, _ := custFixture(t)
	mine, keep := f.path("/home/cust/mine"), f.path("/home/cust/keep")
	require.NoError(t, os.WriteFile(mine, []byte("managed\n"), 0o666))
	require.NoError(t, os.Chmod(mine, 0o666))
	require.NoError(t, os.Chown(mine, 4242, 4242))
	require.NoError(t, os.Link(mine, keep))
	require.NoError(t, os.Rename(mine, f.path("/home/cust/app.conf")))

	_, err := f.apply("cust")
	require.NoError(t, err)
	st, err := os.Stat(keep)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o666), st.Mode(), "the customer's inode keeps its mode")
	assert.Equal(t, uint32(4242), st.Sys().(*syscall.Stat_t).Uid, "the customer's inode keeps its owner")
	conf, err := os.Stat(f.path("/home/cust/app.conf"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), conf.Mode())
	assert.Equal(t, uint32(os.Geteuid()), conf.Sys().(*syscall.Stat_t).Uid)
	assert.NotEqual(t, inode(t, keep), inode(t, f.path("/home/cust/app.conf")), "a fresh inode")
}

// Two displacements of one path within a second keep both, and each is
// logged, though warnings are rate-limited.
func TestMovingAsideTwiceInOneSecondKeepsBoth(t *testing.T) {
	t.Parallel()
	f, _ := custFixture(t)
	core, logs := observer.New(zapcore.InfoLevel)
	f.applier = applier.New(applier.Options{Root: f.root, StateDir: filepath.Join(f.tmp, "state"), ConfigDir: f.dir, Node: render.Node{Name: "n1"},
		Logger: zap.New(ratelog.New(core, time.Minute))})
	require.NoError(t, f.run().Err) // the render a repair restores
	dir := f.path("/home/cust/app")
	for _, content := range []string{"one\n", "two\n"} {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.WriteFile(dir, []byte(content), 0o644))
		rep := f.applier.Repair(context.Background(), []string{dir}, true)
		require.NoError(t, rep.Err())
	}
	aside, err := filepath.Glob(dir + ".ccm-displaced-*")
	require.NoError(t, err)
	var got []string
	for _, p := range aside {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		got = append(got, string(b))
	}
	assert.ElementsMatch(t, []string{"one\n", "two\n"}, got)
	assert.Len(t, logs.FilterMessageSnippet("moved aside").All(), 2, "each displacement is logged")
}

// A customer's own file named like a ccm temp file in a managed directory
// is theirs: only temp files ccm staged are removed.
func TestACustomersTempLikeFileIsNotRemoved(t *testing.T) {
	t.Parallel()
	f, _ := custFixture(t)
	theirs := f.path("/home/cust/.ccm-app.conf.0123456789ab.tmp")
	require.NoError(t, os.WriteFile(theirs, []byte("mine\n"), 0o644))
	require.NoError(t, os.Chown(theirs, 4242, 4242))
	require.NoError(t, os.WriteFile(f.path("/home/cust/app.conf"), []byte("hand\n"), 0o644))
	_, err := f.apply("cust")
	require.NoError(t, err)
	assert.FileExists(t, theirs)
	assert.Equal(t, "managed\n", f.read("/home/cust/app.conf"))
}

// A customer's symlink where a directory of their object belongs (a
// declared one, or the parent of one of their files) leaves that object
// out; the configuration, and every other customer, converges.
func TestASymlinkedObjectDirectoryLeavesOnlyThatObjectOut(t *testing.T) {
	t.Parallel()
	f := newFixture(t, map[string]string{"homes.yaml": `subscribes: [sites]
directories:
  - {path: '/srv/{{ .Object.ID }}', for_each: sites, mode: "0755"}
files:
  - {path: '/home/{{ .Object.ID }}/.ssh/authorized_keys', for_each: sites, content: "key {{ .Object.ID }}\n"}
  - {path: /srv/index.html, content: "x\n"}
`})
	f.put("sites/a", `{}`)
	f.put("sites/b", `{}`)
	_, err := f.apply("homes")
	require.NoError(t, err)
	for name, link := range map[string]string{"/srv/a": "/srv/a-moved", "/home/b/.ssh": "/home/b/keys"} {
		require.NoError(t, os.Rename(f.path(name), f.path(link)))
		require.NoError(t, os.Symlink(f.path(link), f.path(name)))
	}
	require.NoError(t, os.Chmod(f.path("/srv/a-moved"), 0o700)) // so /srv/a differs
	require.NoError(t, os.WriteFile(f.path("/home/b/keys/authorized_keys"), []byte("hand\n"), 0o644))
	f.put("sites/c", `{}`)

	p, err := f.apply("homes")
	require.NoError(t, err, "one customer's symlink fails no configuration")
	assert.Equal(t, "key c\n", f.read("/home/c/.ssh/authorized_keys"))
	var left []string
	for _, o := range p.Output.Failed {
		left = append(left, o.Ref())
		assert.ErrorContains(t, o.Err, "symlink")
	}
	assert.ElementsMatch(t, []string{"sites/a", "sites/b"}, left)
	b, err := os.ReadFile(f.path("/home/b/keys/authorized_keys"))
	require.NoError(t, err)
	assert.Equal(t, "hand\n", string(b), "nothing written through the symlink")
	st, err := os.Stat(f.path("/srv/a-moved"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "nothing changed through the symlink")
}
