package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
)

// mountTmpfs mounts a tmpfs of size at dir, or skips when not permitted
// (it needs root; CI runs as root).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
}

func TestDiskFullKeepsTheOldFileAndSaysWhy(t *testing.T) {
	root := t.TempDir()
	small := filepath.Join(root, "etc", "small")
	mountTmpfs(t, small, "64k")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c.yaml"), []byte(`subscribes: [s]
files:
  - {path: /etc/small/big.conf, content: "{{ (index .Objects.s 0).Data.body }}"}
`), 0o644))
	set, err := configs.Load(dir)
	require.NoError(t, err)
	ap := applier.New(applier.Options{Root: root, StateDir: t.TempDir(), Node: render.Node{Name: "n"}})
	snapOf := func(body string) *objects.Snapshot {
		b := objects.NewBuilder("/ccm", 1, nil)
		b.Add("/ccm/objects/s/x", []byte(`{"body":`+strconv.Quote(body)+`}`), 1)
		return b.Snapshot()
	}

	_, err = ap.Apply(context.Background(), set.Configs["c"], snapOf("old contents\n"), nil)
	require.NoError(t, err)
	_, err = ap.Apply(context.Background(), set.Configs["c"], snapOf(strings.Repeat("x", 256<<10)), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "write "+filepath.Join(small, "big.conf"))
	assert.Contains(t, err.Error(), "no space left on device")

	b, err := os.ReadFile(filepath.Join(small, "big.conf"))
	require.NoError(t, err)
	assert.Equal(t, "old contents\n", string(b), "the old file is intact")
	entries, err := os.ReadDir(small)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temp file is left behind")
}

// soakIterations is how many SIGKILLs the crash loop deals; CCM_SOAK
// raises it (make soak).
func soakIterations() int {
	if n, err := strconv.Atoi(os.Getenv("CCM_SOAK_ITERATIONS")); err == nil && n > 0 {
		return n
	}
	return 12
}

func TestSIGKILLAtRandomPointsNeverLeavesATornFile(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	dir := t.TempDir()
	// 100 files of ~20 KB, each ending in a marker: a torn file lacks it.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bulk.yaml"), []byte(`subscribes: [sites]
files:
  - path: /bulk/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ repeat 2000 .Object.Data.v }}\nEND {{ .Object.Data.v }}\n"
on_change:
  - [sleep, "0.2"]
`), 0o644))
	n := newNode(t, "n", dir, etcd.Endpoints())
	version := func(v string) {
		ops := []string{}
		for i := 0; i < 100; i++ {
			ops = append(ops, fmt.Sprintf("s%03d", i))
		}
		for _, id := range ops {
			_, err := cli.Put(context.Background(), "/ccm/objects/sites/"+id, fmt.Sprintf(`{"v":%q}`, v))
			require.NoError(t, err)
		}
	}
	valid := map[string]bool{}
	check := func() {
		t.Helper()
		entries, _ := os.ReadDir(filepath.Join(n.root, "bulk"))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".ccm-") {
				continue // a temp file a crash left; never read, removed next run
			}
			b, err := os.ReadFile(filepath.Join(n.root, "bulk", e.Name()))
			require.NoError(t, err)
			lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			require.Len(t, lines, 2, "%s is torn", e.Name())
			v := strings.TrimPrefix(lines[1], "END ")
			require.True(t, valid[v], "%s has unknown version %q", e.Name(), v)
			require.Equal(t, strings.Repeat(v, 2000), lines[0], "%s is torn", e.Name())
		}
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < soakIterations(); i++ {
		v := fmt.Sprintf("v%02d", i)
		valid[v] = true
		version(v)
		proc := n.start("apply", "--once", "--lock-ttl", "1s")
		time.Sleep(time.Duration(rng.IntN(600)) * time.Millisecond) // a random point of the run
		_ = proc.Process.Signal(syscall.SIGKILL)
		_, _ = proc.Process.Wait()
		check()
	}

	// Its own lease is not short: a loaded machine's late keep-alive
	// would fail its fence (the killed runs' leases stay 1 s, so that
	// this run waits little for them).
	r := n.run("", "apply", "--once", "--lock-ttl", "10s")
	require.Equal(t, 0, r.code, r.stderr)
	check()
	entries, err := os.ReadDir(filepath.Join(n.root, "bulk"))
	require.NoError(t, err)
	assert.Len(t, entries, 100, "every file, and no temp file left")
	last := fmt.Sprintf("v%02d", soakIterations()-1)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(n.root, "bulk", e.Name()))
		require.NoError(t, err)
		assert.True(t, strings.HasSuffix(string(b), "END "+last+"\n"), "%s converged", e.Name())
	}
	assert.Equal(t, 0, n.run("", "plan").code, "a plan after the crashes finds nothing to do")
}
