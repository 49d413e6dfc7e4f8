package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/drift"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// driftConfig renders one file per site in a managed directory, and one
// more in a second directory; validate and on_change log to $0, and
// validate refuses while $0.refuse exists.
func driftConfig(log string) string {
	q := strconv.Quote(log)
	return `subscribes: [sites]
directories:
  - {path: /sites, mode: "0755"}
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n", mode: "0640", owner: root, group: root}
  - {path: /other/index.conf, content: "index\n"}
validate: [sh, -c, 'echo validate >> "$0"; test ! -e "$0.refuse"', ` + q + `]
on_change: [[sh, -c, 'echo on_change >> "$0"', ` + q + `]]
`
}

// driftNode is an agent with a drift watcher, on a real etcd and a real
// root; log records its validate and on_change.
type driftNode struct {
	*node
	log  string
	etcd *etcdtest.Cluster
}

func startDriftAgent(t *testing.T, opts drift.Options) *driftNode {
	t.Helper()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	config := filepath.Join(dir, "conf")
	log := filepath.Join(dir, "commands.log")
	require.NoError(t, os.MkdirAll(config, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(config, "sites.yaml"), []byte(driftConfig(log)), 0o644))
	state := filepath.Join(dir, "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	n := &node{root: filepath.Join(dir, "root"), config: config, admin: etcd.Client(t)}
	require.NoError(t, os.Mkdir(n.root, 0o755))
	n.cluster = cluster.New(n.admin, cluster.Options{})
	if opts.Mode == drift.Off {
		opts.Mode = drift.Repair
	}
	// A batch is checked 200 ms after its last event: the steps of one
	// drift in a test (a directory removed, then a file written in its
	// place) are microseconds apart, so they land in one batch, as one
	// person's edit does.
	opts.Quiet, opts.MaxWait = 200*time.Millisecond, 2*time.Second
	opts.Refresh = 20 * time.Millisecond
	var err error
	n.ag, err = agent.New(agent.Options{Client: etcd.Client(t), Node: "web1", ConfigDir: config, Root: n.root, StateDir: state,
		LockTTL: 2 * time.Second, Logger: zaptest.NewLogger(t), Drift: opts})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	d := &driftNode{node: n, log: log, etcd: etcd}
	d.put(t, "sites/a", `{"v": "a1"}`)
	rev := d.put(t, "sites/b", `{"v": "b1"}`)
	d.reported(t, "web1", rev, api.ResultConverged)
	require.Eventually(t, func() bool { return d.watches() >= 1 }, 30*time.Second, 5*time.Millisecond, "the watcher watches")
	return d
}

func (d *driftNode) watches() float64 { return testutil.ToFloat64(d.ag.Metrics().DriftWatches) }

func (d *driftNode) repairs() float64 {
	return testutil.ToFloat64(d.ag.Metrics().DriftRepairs.WithLabelValues("sites"))
}

// commands is what validate and on_change logged.
func (d *driftNode) commands() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// repaired waits until the repairs counter passes from, and the file at
// p is as wanted (content and mode).
func (d *driftNode) repaired(t *testing.T, from float64, p, content string, mode os.FileMode) {
	t.Helper()
	require.Eventually(t, func() bool { return d.repairs() > from }, 30*time.Second, 5*time.Millisecond, "a repair is counted for %s", p)
	st, err := os.Lstat(filepath.Join(d.root, p))
	require.NoError(t, err)
	assert.Equal(t, mode, st.Mode(), "%s: mode and type", p)
	assert.Equal(t, content, d.read(p))
}

// Each kind of drift of a managed file, and a managed directory replaced
// by a file, is put back from the last converged render, and each batch
// runs validate and on_change once.
func TestDriftOfEachKindIsRepaired(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{Storm: 100}) // one path, drifted on purpose again and again
	a := filepath.Join(d.root, "sites/a.conf")
	cases := []struct {
		name  string
		drift func(t *testing.T)
	}{
		{"append", func(t *testing.T) {
			f, err := os.OpenFile(a, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteString("hand edit\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
		{"truncate", func(t *testing.T) { require.NoError(t, os.Truncate(a, 0)) }},
		{"rename over (an editor's save)", func(t *testing.T) {
			tmp := filepath.Join(d.root, "sites/.a.conf.swp")
			require.NoError(t, os.WriteFile(tmp, []byte("edited\n"), 0o640))
			require.NoError(t, os.Rename(tmp, a))
		}},
		{"delete", func(t *testing.T) { require.NoError(t, os.Remove(a)) }},
		{"chmod", func(t *testing.T) { require.NoError(t, os.Chmod(a, 0o666)) }},
		{"chown", func(t *testing.T) { require.NoError(t, os.Lchown(a, 4242, 4242)) }},
		{"the directory replaced by a file", func(t *testing.T) {
			file := filepath.Join(d.root, "sites.new")
			require.NoError(t, os.WriteFile(file, []byte("not a directory\n"), 0o644))
			require.NoError(t, os.Rename(filepath.Join(d.root, "sites"), filepath.Join(t.TempDir(), "old")))
			require.NoError(t, os.Rename(file, filepath.Join(d.root, "sites")))
		}},
	}
	for _, c := range cases {
		before := d.repairs()
		ran := strings.Count(d.commands(), "on_change")
		c.drift(t)
		d.repaired(t, before, "/sites/a.conf", "a1\n", 0o640)
		st, err := os.Stat(a)
		require.NoError(t, err)
		assert.Equal(t, uint32(os.Getuid()), statOwner(st), "%s: owner", c.name)
		assert.Equal(t, "b1\n", d.read("/sites/b.conf"), "%s: the other file", c.name)
		dir, err := os.Lstat(filepath.Join(d.root, "sites"))
		require.NoError(t, err)
		assert.True(t, dir.IsDir(), "%s: the managed directory", c.name)
		require.Eventually(t, func() bool { return strings.Count(d.commands(), "on_change") == ran+1 }, 30*time.Second, 5*time.Millisecond,
			"%s: on_change once for the batch", c.name)
	}
	require.Eventually(t, func() bool {
		v, err := d.cluster.View(context.Background())
		return err == nil && len(v.Nodes) == 1 && strings.HasPrefix(v.Nodes[0].Drift, "drift repaired: "+filepath.Join(d.root, "sites/"))
	}, 30*time.Second, 5*time.Millisecond, "ccm status and the dashboard show the last repair")
	moved, err := filepath.Glob(filepath.Join(d.root, "sites.ccm-displaced-*"))
	require.NoError(t, err)
	assert.Len(t, moved, 1, "the file that stood for the directory is moved aside, not deleted")
	assert.Equal(t, 0.0, testutil.ToFloat64(d.ag.Metrics().Runs.WithLabelValues(api.ResultFailed)))
}

// A foreign file in a watched directory is never touched, and changes to
// it run nothing.
func TestDriftLeavesForeignFilesAlone(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{})
	before := d.commands()
	foreign := filepath.Join(d.root, "sites/local.conf")
	require.NoError(t, os.WriteFile(foreign, []byte("mine\n"), 0o600))
	require.NoError(t, os.Chmod(foreign, 0o644))
	// A managed file's drift after it: once it is repaired, the foreign
	// file's events (queued before) were handled too.
	from := d.repairs()
	require.NoError(t, os.WriteFile(filepath.Join(d.root, "sites/b.conf"), []byte("x\n"), 0o640))
	d.repaired(t, from, "/sites/b.conf", "b1\n", 0o640)
	assert.Equal(t, "mine\n", d.read("/sites/local.conf"))
	st, err := os.Stat(foreign)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode())
	assert.Equal(t, from+1, d.repairs(), "only the managed file counted")
	assert.Equal(t, strings.Count(before, "on_change")+1, strings.Count(d.commands(), "on_change"))
}

// One batch of several drifted files runs on_change once; ccm's own
// writes (the repair, and a run that changes a file) are no drift.
func TestDriftOnChangeOncePerBatchAndNeverForOwnWrites(t *testing.T) {
	t.Parallel()
	// The three removals are one batch however slow the machine: the
	// watcher's read of the first event that follows holds (the fault
	// hook runs as it parses the kernel's events) until all three are
	// done, so their events reach it together, not a quiet period apart.
	var armed atomic.Bool
	gate := make(chan struct{})
	var held sync.Once
	d := startDriftAgent(t, drift.Options{Faults: drift.Faults{Overflow: func(string) bool {
		if armed.Load() {
			held.Do(func() { <-gate })
		}
		return false
	}}})
	ran := strings.Count(d.commands(), "on_change")
	from := d.repairs()
	armed.Store(true)
	require.NoError(t, os.Remove(filepath.Join(d.root, "sites/a.conf")))
	require.NoError(t, os.Remove(filepath.Join(d.root, "sites/b.conf")))
	require.NoError(t, os.Remove(filepath.Join(d.root, "other/index.conf")))
	close(gate)
	require.Eventually(t, func() bool { return d.repairs() >= from+3 }, 30*time.Second, 5*time.Millisecond)
	assert.Equal(t, ran+1, strings.Count(d.commands(), "on_change"), "one batch, one on_change")

	// A run's own change: no repair counted, and the run's on_change
	// only.
	rev := d.put(t, "sites/a", `{"v": "a2"}`)
	d.reported(t, "web1", rev, api.ResultConverged)
	// A later drift's repair proves every earlier event was handled.
	require.NoError(t, os.Chmod(filepath.Join(d.root, "sites/b.conf"), 0o600))
	d.repaired(t, from+3, "/sites/b.conf", "b1\n", 0o640)
	assert.Equal(t, from+4, d.repairs(), "the run's write was not drift")
	assert.Equal(t, "a2\n", d.read("/sites/a.conf"), "the repair keeps the run's newer render")
	assert.Equal(t, ran+3, strings.Count(d.commands(), "on_change"), "the run's and the repair's")
}

// Events lost to an overflow of the kernel's queue are made up for by a
// check of every managed path.
func TestDriftOverflowChecksEverything(t *testing.T) {
	t.Parallel()
	lost := "/sites/a.conf"
	var armed atomic.Bool
	d := startDriftAgent(t, drift.Options{Faults: drift.Faults{Overflow: func(real string) bool {
		return armed.Load() && strings.HasSuffix(real, "/root"+lost)
	}}})
	armed.Store(true)
	from := d.repairs()
	require.NoError(t, os.WriteFile(filepath.Join(d.root, lost), []byte("lost event\n"), 0o640))
	d.repaired(t, from, lost, "a1\n", 0o640)
	assert.GreaterOrEqual(t, testutil.ToFloat64(d.ag.Metrics().DriftFullChecks), 1.0, "a full check found it")
}

// Past the watch limit, the directories without a watch are scanned.
func TestDriftAtTheWatchLimitScans(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{MaxWatches: 1, ScanEvery: 50 * time.Millisecond})
	// Three directories hold managed paths: /, /sites and /other.
	assert.Equal(t, 1.0, d.watches(), "no more watches than the limit")
	for _, p := range []string{"/sites/a.conf", "/other/index.conf"} {
		from := d.repairs()
		require.NoError(t, os.Chmod(filepath.Join(d.root, p), 0o600))
		want := os.FileMode(0o640)
		if p == "/other/index.conf" {
			want = 0o644
		}
		d.repaired(t, from, p, map[string]string{"/sites/a.conf": "a1\n", "/other/index.conf": "index\n"}[p], want)
	}
	require.Eventually(t, func() bool {
		p, err := d.cluster.Presence(context.Background(), "web1")
		return err == nil && p != nil && p.Drift != nil && p.Drift.Scanned == 2
	}, 30*time.Second, 5*time.Millisecond, "the presence says how many directories are scanned")
}

// A path that something else writes again and again is repaired with
// backoff, and reported.
func TestDriftFoughtPathIsBackedOffAndReported(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{Storm: 3})
	p := filepath.Join(d.root, "sites/a.conf")
	for i := 0; ; i++ {
		require.NoError(t, os.WriteFile(p, []byte("fight "+strconv.Itoa(i)+"\n"), 0o640))
		if testutil.ToFloat64(d.ag.Metrics().DriftBackoff) == 1 {
			break
		}
		from := d.repairs()
		require.Eventually(t, func() bool {
			return d.repairs() > from || testutil.ToFloat64(d.ag.Metrics().DriftBackoff) == 1
		}, 30*time.Second, 5*time.Millisecond)
	}
	assert.Equal(t, 3.0, d.repairs(), "repaired Storm times, then backed off")
	require.Eventually(t, func() bool {
		pr, err := d.cluster.Presence(context.Background(), "web1")
		return err == nil && pr != nil && pr.Drift != nil && len(pr.Drift.Backoff) == 1 && pr.Drift.Backoff[0] == p
	}, 30*time.Second, 5*time.Millisecond, "the presence names the path in backoff")
}

func statOwner(st os.FileInfo) uint32 { return st.Sys().(*syscall.Stat_t).Uid }

// A repair takes no cluster lock, and restores what the node last
// converged: not a change to objects it has not converged yet, which
// waits for its run under the lock.
func TestDriftRepairsTheLastConvergedRenderWithoutTheLock(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{})
	other := cluster.New(d.etcd.Client(t), cluster.Options{Node: "web9"})
	s, err := other.NewSession(context.Background(), cluster.SessionOptions{TTL: 30 * time.Second})
	require.NoError(t, err)
	defer s.Close()
	lock, err := s.Lock(context.Background(), nil)
	require.NoError(t, err)
	rev := d.put(t, "sites/a", `{"v": "a2"}`)
	require.Eventually(t, func() bool {
		v, err := d.cluster.View(context.Background())
		return err == nil && slices.Contains(v.Waiting, "web1")
	}, 30*time.Second, 5*time.Millisecond, "web1 waits for the lock web9 holds")

	from := d.repairs()
	require.NoError(t, os.WriteFile(filepath.Join(d.root, "sites/a.conf"), []byte("hand\n"), 0o640))
	d.repaired(t, from, "/sites/a.conf", "a1\n", 0o640)

	require.NoError(t, lock.Release())
	d.reported(t, "web1", rev, api.ResultConverged)
	assert.Equal(t, "a2\n", d.read("/sites/a.conf"), "the change converges under the lock")
}

// A repair that validate refuses is rolled back as a run's is, and the
// full run it asks for raises the node's failure record under the lock.
func TestDriftAFailedRepairRaisesTheFailureRecord(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{})
	require.NoError(t, os.WriteFile(d.log+".refuse", nil, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(d.root, "sites/a.conf"), []byte("hand\n"), 0o640))
	s := d.reported(t, "web1", 0, api.ResultFailed)
	assert.Contains(t, s.Error, "validate failed")
	require.Eventually(t, func() bool {
		v, err := d.cluster.View(context.Background())
		return err == nil && v.Failure != nil && v.Failure.Node == "web1" && v.Failure.Configuration == "sites"
	}, 30*time.Second, 5*time.Millisecond, "the failure record names the node and the configuration")
	// A look that began before the agent saw its own flag may still be
	// trying a repair (staged, validated, refused, restored): the file
	// settles back to the hand edit, and is never left repaired.
	assert.Eventually(t, func() bool { return d.read("/sites/a.conf") == "hand\n" }, 30*time.Second, 5*time.Millisecond,
		"validate refused: the files are as before the repair")
	assert.Equal(t, 0.0, d.repairs(), "nothing counted as repaired")
	// Found once by the failed repair, and again by each look while the
	// flag holds repairs back: never counted as repaired.
	assert.GreaterOrEqual(t, testutil.ToFloat64(d.ag.Metrics().DriftFound.WithLabelValues("sites")), 1.0)
}

// --drift watch reports and changes nothing; the next run of the
// configuration, even one for another object, puts the file back.
func TestDriftWatchOnlyReportsAndTheNextRunRepairs(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{Mode: drift.Watch})
	require.NoError(t, os.WriteFile(filepath.Join(d.root, "sites/a.conf"), []byte("hand\n"), 0o640))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(d.ag.Metrics().DriftFound.WithLabelValues("sites")) >= 1
	}, 30*time.Second, 5*time.Millisecond, "the drift is counted as found")
	assert.Equal(t, "hand\n", d.read("/sites/a.conf"), "and left as it is")
	assert.Equal(t, 0.0, d.repairs())
	require.Eventually(t, func() bool {
		v, err := d.cluster.View(context.Background())
		return err == nil && len(v.Nodes) == 1 && strings.HasPrefix(v.Nodes[0].Drift, "drift found (not repaired): ")
	}, 30*time.Second, 5*time.Millisecond, "ccm status says it was found, not repaired")

	rev := d.put(t, "sites/b", `{"v": "b2"}`)
	d.reported(t, "web1", rev, api.ResultConverged)
	assert.Equal(t, "a1\n", d.read("/sites/a.conf"), "an event-driven run reads the drifted file again")
	assert.Equal(t, "b2\n", d.read("/sites/b.conf"))
}

// Whatever stands at a managed file's path instead of a regular file (a
// FIFO, a symlink, a directory), or at its parent directory's, is moved
// aside and the file repaired: no repair fails, no run fails, and the
// failure flag that would halt every node stays down.
func TestDriftANonRegularEntryAtAManagedFileIsMovedAsideAndRepaired(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{Storm: 100})
	a := filepath.Join(d.root, "sites/a.conf")
	elsewhere := filepath.Join(t.TempDir(), "target")
	require.NoError(t, os.WriteFile(elsewhere, []byte("not ccm's\n"), 0o600))
	cases := []struct {
		name, path, moved, content string
		drift                      func(t *testing.T)
	}{
		{"fifo", "/sites/a.conf", a, "a1\n", func(t *testing.T) {
			require.NoError(t, os.Remove(a))
			require.NoError(t, syscall.Mkfifo(a, 0o644))
		}},
		{"symlink", "/sites/a.conf", a, "a1\n", func(t *testing.T) {
			require.NoError(t, os.Remove(a))
			require.NoError(t, os.Symlink(elsewhere, a))
		}},
		{"directory", "/sites/a.conf", a, "a1\n", func(t *testing.T) {
			require.NoError(t, os.Remove(a))
			require.NoError(t, os.Mkdir(a, 0o755))
		}},
		{"parent replaced by a file", "/other/index.conf", filepath.Join(d.root, "other"), "index\n", func(t *testing.T) {
			other := filepath.Join(d.root, "other")
			require.NoError(t, os.Rename(other, filepath.Join(t.TempDir(), "old")))
			require.NoError(t, os.WriteFile(other, []byte("mine\n"), 0o644))
		}},
	}
	for _, c := range cases {
		before := d.repairs()
		c.drift(t)
		require.Eventually(t, func() bool { return d.repairs() > before && d.read(c.path) == c.content }, 30*time.Second, 5*time.Millisecond,
			"%s: repaired", c.name)
		st, err := os.Lstat(filepath.Join(d.root, c.path))
		require.NoError(t, err)
		assert.True(t, st.Mode().IsRegular(), "%s: a regular file again", c.name)
		moved, err := filepath.Glob(c.moved + ".ccm-displaced-*")
		require.NoError(t, err)
		assert.NotEmpty(t, moved, "%s: what stood there is kept aside", c.name)
	}
	target, err := os.ReadFile(elsewhere)
	require.NoError(t, err)
	assert.Equal(t, "not ccm's\n", string(target), "a symlink is never followed")
	assert.Equal(t, 0.0, testutil.ToFloat64(d.ag.Metrics().Runs.WithLabelValues(api.ResultFailed)), "no run failed")
	v, err := d.cluster.View(context.Background())
	require.NoError(t, err)
	assert.Nil(t, v.Failure, "the failure flag stays down")
}

// A managed directory that an operator relocated (replaced by a symlink
// to elsewhere) is refused by a repair as by a run, never moved aside.
func TestDriftASymlinkedManagedDirectoryIsRefusedNotReplaced(t *testing.T) {
	t.Parallel()
	d := startDriftAgent(t, drift.Options{})
	sites, moved := filepath.Join(d.root, "sites"), filepath.Join(d.root, "srv-sites")
	require.NoError(t, os.Rename(sites, moved))
	require.NoError(t, os.Symlink(moved, sites))
	s := d.reported(t, "web1", 0, api.ResultFailed)
	assert.Contains(t, s.Error, "symlink")
	st, err := os.Lstat(sites)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSymlink, st.Mode().Type(), "the operator's symlink stays")
	b, err := os.ReadFile(filepath.Join(moved, "a.conf"))
	require.NoError(t, err)
	assert.Equal(t, "a1\n", string(b), "the relocated files are untouched")
	aside, err := filepath.Glob(sites + ".ccm-displaced-*")
	require.NoError(t, err)
	assert.Empty(t, aside)
}
