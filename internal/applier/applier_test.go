package applier_test

import (
	"context"
	"encoding/json"
	"fmt"
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
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// fixture is a configuration directory, a root and a state directory.
type fixture struct {
	t          *testing.T
	set        *configs.Set
	dir        string // the configuration directory
	root, tmp  string
	applier    *applier.Applier
	objectsMap map[string]string
	revs       map[string]int64 // mod revision per key, bumped on put as etcd does
	rev        int64
}

func newFixture(t *testing.T, files map[string]string) *fixture {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	set, err := configs.Load(dir)
	require.NoError(t, err)
	f := &fixture{t: t, set: set, dir: dir, root: t.TempDir(), tmp: t.TempDir(), objectsMap: map[string]string{}, revs: map[string]int64{}}
	f.applier = applier.New(applier.Options{Root: f.root, StateDir: filepath.Join(f.tmp, "state"), ConfigDir: dir, Node: render.Node{Name: "n1"}})
	return f
}

func (f *fixture) put(key, value string) {
	f.rev++
	f.objectsMap[key], f.revs[key] = value, f.rev
}

func (f *fixture) del(key string) {
	f.rev++
	delete(f.objectsMap, key)
}

func (f *fixture) snap() *objects.Snapshot {
	b := objects.NewBuilder("/ccm", f.rev, nil)
	for k, v := range f.objectsMap {
		b.Add("/ccm/objects/"+k, []byte(v), f.revs[k])
	}
	return b.Snapshot()
}

func (f *fixture) apply(name string) (*applier.Plan, error) {
	return f.applier.Apply(context.Background(), f.set.Configs[name], f.snap(), nil)
}

func (f *fixture) plan(name string) *applier.Plan {
	p, err := f.applier.Plan(f.set.Configs[name], f.snap(), nil)
	require.NoError(f.t, err)
	return p
}

func (f *fixture) path(p string) string { return filepath.Join(f.root, p) }

func (f *fixture) read(p string) string {
	b, err := os.ReadFile(f.path(p))
	require.NoError(f.t, err)
	return string(b)
}

// tree returns every file under the root with its content and mode.
func (f *fixture) tree() map[string]string {
	out := map[string]string{}
	require.NoError(f.t, filepath.Walk(f.root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, f.root)] = fi.Mode().String() + " " + string(b)
		return err
	}))
	return out
}

func inode(t *testing.T, p string) uint64 {
	fi, err := os.Stat(p)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

const sites = `
subscribes: [sites]
files:
  - path: /etc/nginx/sites/{{ .Object.ID }}.conf
    for_each: sites
    content: "server_name {{ .Object.Data.name }};\n"
    mode: "0640"
`

func TestApplyWritesWithModeAndTouchesNothingTheSecondTime(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	f := newFixture(t, map[string]string{"web.yaml": sites})
	f.put("sites/a", `{"name":"a.example"}`)

	p, err := f.apply("web")
	require.NoError(t, err)
	assert.True(t, p.Changed())
	assert.Equal(t, "server_name a.example;\n", f.read("/etc/nginx/sites/a.conf"))
	fi, err := os.Stat(f.path("/etc/nginx/sites/a.conf"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode(), "final mode regardless of umask")

	ino := inode(t, f.path("/etc/nginx/sites/a.conf"))
	p, err = f.apply("web")
	require.NoError(t, err)
	assert.False(t, p.Changed())
	assert.Equal(t, ino, inode(t, f.path("/etc/nginx/sites/a.conf")), "an unchanged file is not rewritten")
}

func TestApplyPrunesOnlyFilesItWrote(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": sites})
	f.put("sites/a", `{"name":"a"}`)
	f.put("sites/b", `{"name":"b"}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(f.path("/etc/nginx/sites/manual.conf"), []byte("mine\n"), 0o644))

	f.del("sites/b")
	p := f.plan("web")
	require.Len(t, p.Changes, 1)
	assert.Equal(t, applier.Remove, p.Changes[0].Action)
	assert.Equal(t, "--- a/etc/nginx/sites/b.conf\n+++ /dev/null\n@@ -1 +0,0 @@\n-server_name b;\n", p.Changes[0].Diff())

	_, err = f.apply("web")
	require.NoError(t, err)
	assert.NoFileExists(t, f.path("/etc/nginx/sites/b.conf"))
	assert.FileExists(t, f.path("/etc/nginx/sites/a.conf"))
	assert.Equal(t, "mine\n", f.read("/etc/nginx/sites/manual.conf"), "a file ccm never wrote is never removed")
}

func TestValidateFailureRestoresEveryFileByteForByte(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "broken")
	f := newFixture(t, map[string]string{"web.yaml": sites + "validate: [test, '!', -e, " + strconv.Quote(marker) + "]\n"})
	f.put("sites/a", `{"name":"a"}`)
	f.put("sites/b", `{"name":"b"}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(f.path("/etc/nginx/sites/b.conf"), 0o600)) // drifted mode is restored too
	before := f.tree()

	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	f.put("sites/a", `{"name":"changed"}`)
	f.del("sites/b")
	f.put("sites/c", `{"name":"new"}`)
	_, err = f.apply("web")
	require.ErrorIs(t, err, applier.ErrValidate)
	assert.ErrorContains(t, err, `"test ! -e `+marker+`": exit status 1`)
	assert.Equal(t, before, f.tree(), "created, changed and removed files are all restored")

	// The manifest was kept: b is still known, so once validate passes the
	// run removes it.
	require.NoError(t, os.Remove(marker))
	_, err = f.apply("web")
	require.NoError(t, err)
	assert.NoFileExists(t, f.path("/etc/nginx/sites/b.conf"))
	assert.Equal(t, "server_name changed;\n", f.read("/etc/nginx/sites/a.conf"))
}

func TestCheckFailureWritesNothing(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": `
subscribes: [sites]
directories:
  - path: /etc/new-dir
files:
  - path: /etc/nginx/main.conf
    content: "{{ range .Objects.sites }}{{ .Data.body }}{{ end }}\n"
    check: [sh, -c, 'grep -q "^ok" "$0" || { echo "bad line in $0:1" >&2; exit 1; }', "{{ .Staged }}"]
`})
	f.put("sites/a", `{"body":"ok"}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	before := f.tree()

	f.put("sites/a", `{"body":"broken"}`)
	_, err = f.apply("web")
	require.Error(t, err)
	final := f.path("/etc/nginx/main.conf")
	assert.Contains(t, err.Error(), "check /etc/nginx/main.conf: ")
	assert.Contains(t, err.Error(), "bad line in "+final+":1", "the check's output names the final path")
	assert.NotContains(t, err.Error(), ".ccm-", "never the staged temp file, which is gone")
	assert.Equal(t, before, f.tree(), "no file changed and no temp file is left")
}

// A for_each file whose check fails holds back its object alone: its file
// stays at its last good version, and every other object converges.
func TestACheckFailureQuarantinesItsObjectAlone(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	f := newFixture(t, map[string]string{"web.yaml": `
subscribes: [sites]
files:
  - path: /etc/nginx/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.body }}\n"
    check: [sh, -c, 'grep -q "^ok" "$0" || { echo "bad line in $0:1" >&2; exit 1; }', "{{ .Staged }}"]
validate: [sh, -c, 'echo validate >> "$0"', ` + strconv.Quote(log) + `]
on_change: [[sh, -c, 'echo on_change >> "$0"', ` + strconv.Quote(log) + `]]
`})
	f.put("sites/a", `{"body":"ok"}`)
	f.put("sites/b", `{"body":"ok b"}`)
	_, err := f.apply("web")
	require.NoError(t, err)

	f.put("sites/a", `{"body":"ok too"}`)
	f.put("sites/b", `{"body":"broken"}`)
	f.put("sites/c", `{"body":"broken"}`)
	f.put("sites/d", `{"body":"ok d"}`)
	require.NoError(t, os.Remove(log))
	p, err := f.apply("web")
	require.NoError(t, err, "one customer's bad object does not fail the configuration")
	ran, _ := os.ReadFile(log)
	assert.Equal(t, "validate\non_change\n", string(ran), "validate and on_change run for the rest")
	assert.Equal(t, "ok too\n", f.read("/etc/nginx/a.conf"))
	assert.Equal(t, "ok b\n", f.read("/etc/nginx/b.conf"), "the last good version stays")
	assert.NoFileExists(t, f.path("/etc/nginx/c.conf"))
	assert.Equal(t, "ok d\n", f.read("/etc/nginx/d.conf"))
	require.Len(t, p.Output.Failed, 2)
	assert.Equal(t, "sites/b", p.Output.Failed[0].Ref())
	assert.ErrorContains(t, p.Output.Failed[0].Err, "bad line in "+f.path("/etc/nginx/b.conf")+":1")

	// The quarantined file is still owned: deleting the object prunes it.
	f.del("sites/b")
	f.put("sites/c", `{"body":"ok c"}`)
	_, err = f.apply("web")
	require.NoError(t, err)
	assert.NoFileExists(t, f.path("/etc/nginx/b.conf"))
	assert.Equal(t, "ok c\n", f.read("/etc/nginx/c.conf"))
}

// Two customers' bad objects that change in the same run are
// quarantined, the others converge; a check that refuses every object
// (a new release's) fails the configuration, and nothing is written.
func TestACheckThatFailsForEveryObjectFailsTheConfiguration(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": `
subscribes: [sites]
files:
  - path: /etc/nginx/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.body }}\n"
    check: [sh, -c, 'grep -q "^ok" "$0" || { echo "refused" >&2; exit 1; }', "{{ .Staged }}"]
`})
	for _, id := range []string{"a", "b", "c"} {
		f.put("sites/"+id, `{"body":"ok"}`)
	}
	_, err := f.apply("web")
	require.NoError(t, err)
	f.put("sites/a", `{"body":"broken"}`)
	f.put("sites/b", `{"body":"broken"}`)
	p, err := f.apply("web")
	require.NoError(t, err, "two bad objects of three are theirs")
	assert.Len(t, p.Output.Failed, 2)
	f.put("sites/c", `{"body":"broken"}`)
	_, err = f.apply("web")
	require.ErrorIs(t, err, render.ErrEveryObject, "every object refused: the configuration's fault")
	assert.ErrorContains(t, err, "refused")
	for _, id := range []string{"a", "b", "c"} {
		assert.Equal(t, "ok\n", f.read("/etc/nginx/"+id+".conf"), "%s: nothing written", id)
	}
}

func TestCheckSeesTheStagedFileAndItsFinalPath(t *testing.T) {
	out := filepath.Join(t.TempDir(), "seen")
	// The argv names sh explicitly to record both placeholders.
	f := newFixture(t, map[string]string{"c.yaml": `
files:
  - path: /etc/x.conf
    content: "hello\n"
    mode: "0600"
    check: [sh, -c, 'cp --preserve=mode "$0" "$2" && echo "$1" > "$2.path"', "{{ .Staged }}", "{{ .Path }}", ` + strconv.Quote(out) + `]
`})
	_, err := f.apply("c")
	require.NoError(t, err)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "hello\n", string(b))
	fi, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode(), "the staged file already has its final mode")
	path, err := os.ReadFile(out + ".path")
	require.NoError(t, err)
	assert.Equal(t, f.path("/etc/x.conf")+"\n", string(path), "{{ .Path }} is the final path under the root")
}

func TestOnChangeRunsOnceAfterAChangeAndIsRetriedAfterFailure(t *testing.T) {
	dir := t.TempDir()
	log, gate := filepath.Join(dir, "log"), filepath.Join(dir, "gate")
	// The argv names sh explicitly: ccm itself never uses a shell.
	f := newFixture(t, map[string]string{"web.yaml": sites + `on_change:
  - [sh, -c, 'echo run >> "$0"', ` + strconv.Quote(log) + `]
  - [test, -e, ` + strconv.Quote(gate) + `]
`})
	runs := func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), "run")
	}
	f.put("sites/a", `{"name":"a"}`)
	_, err := f.apply("web")
	require.ErrorIs(t, err, applier.ErrOnChange)
	assert.Equal(t, 1, runs())
	assert.True(t, f.plan("web").PendingOnChange)

	_, err = f.apply("web") // nothing changed, but on_change is pending
	require.ErrorIs(t, err, applier.ErrOnChange)
	assert.Equal(t, 2, runs())

	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	_, err = f.apply("web")
	require.NoError(t, err)
	assert.Equal(t, 3, runs())

	_, err = f.apply("web")
	require.NoError(t, err)
	assert.Equal(t, 3, runs(), "no change, nothing pending: on_change does not run")
}

func TestCommandsNeverSeeObjectDataOrAShell(t *testing.T) {
	pwned := filepath.Join(t.TempDir(), "pwned")
	shell := filepath.Join(t.TempDir(), "shell-ran")
	args := filepath.Join(t.TempDir(), "args")
	// validate carries shell syntax as a literal argument: run directly,
	// test -n sees a non-empty string; run through a shell, touch would run.
	f := newFixture(t, map[string]string{"web.yaml": `
subscribes: [sites]
files:
  - path: /etc/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.name }}\n"
    check: [cp, "{{ .Staged }}", ` + strconv.Quote(args) + `]
validate: [test, -n, ` + strconv.Quote("$(touch "+shell+")") + `]
`})
	hostile := `$(touch ` + pwned + `); rm -rf / ; ` + "`touch " + pwned + "`"
	f.put("sites/a", `{"name":`+strconv.Quote(hostile)+`}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	assert.NoFileExists(t, pwned)
	assert.NoFileExists(t, shell, "commands run without a shell")
	b, err := os.ReadFile(args)
	require.NoError(t, err)
	assert.Equal(t, hostile+"\n", string(b), "check ran on the staged file, which holds the data; its argv did not")
	assert.Equal(t, hostile+"\n", f.read("/etc/a.conf"), "data is written verbatim to the file")
}

func TestCommandTimeoutKillsTheProcessGroup(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pid")
	f := newFixture(t, map[string]string{"c.yaml": `
files:
  - {path: /x, content: x}
validate: [sh, -c, 'sleep 300 & echo $! > "$0"; wait', ` + strconv.Quote(pidfile) + `]
timeout: 2s
`})
	start := time.Now()
	_, err := f.apply("c")
	require.ErrorIs(t, err, applier.ErrTimeout)
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.NoFileExists(t, f.path("/x"), "rolled back")

	raw, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		// Signal 0 fails once the background child is gone (or a zombie
		// reaped by init); a surviving child would answer.
		return syscall.Kill(pid, 0) != nil || isZombie(pid)
	}, 5*time.Second, 20*time.Millisecond, "the grandchild sleep was killed with its group")
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	fields := strings.Fields(string(b))
	return len(fields) > 2 && fields[2] == "Z"
}

func TestModeDriftIsAnAttributeOnlyChange(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": sites})
	f.put("sites/a", `{"name":"a"}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(f.path("/etc/nginx/sites/a.conf"), 0o666))
	ino := inode(t, f.path("/etc/nginx/sites/a.conf"))

	p := f.plan("web")
	require.Len(t, p.Changes, 1)
	assert.False(t, p.Changes[0].Content)
	assert.Equal(t, []string{"mode 0666 -> 0640"}, p.Changes[0].Attrs)
	assert.Empty(t, p.Changes[0].Diff())

	_, err = f.apply("web")
	require.NoError(t, err)
	fi, err := os.Stat(f.path("/etc/nginx/sites/a.conf"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode())
	assert.NotEqual(t, ino, inode(t, f.path("/etc/nginx/sites/a.conf")), "a fresh copy: an inode is never chmodded in place")
}

func TestApplyRemovesTempFilesACrashLeftBehind(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": sites})
	f.put("sites/a", `{"name":"a"}`)
	_, err := f.apply("web")
	require.NoError(t, err)
	stale := f.path("/etc/nginx/sites/.ccm-a.conf.0123456789ab.tmp")
	require.NoError(t, os.WriteFile(stale, []byte("torn"), 0o644))

	f.put("sites/a", `{"name":"a2"}`)
	_, err = f.apply("web")
	require.NoError(t, err)
	assert.NoFileExists(t, stale)
}

func TestRunSkipsDependentsOfAFailedConfiguration(t *testing.T) {
	f := newFixture(t, map[string]string{
		"base.yaml":  "files:\n  - {path: /base, content: '{{ .Objects.missing }}'}\n",
		"child.yaml": "depends_on: [base]\nfiles:\n  - {path: /child, content: c}\n",
		"other.yaml": "files:\n  - {path: /other, content: o}\n",
	})
	names := f.applier.SelectAll(f.set)
	r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), names)
	require.True(t, r.Failed())
	got := map[string]applier.Result{}
	for _, o := range r.Outcomes {
		got[o.Config] = o.Result
	}
	assert.Equal(t, map[string]applier.Result{"base": applier.Failed, "child": applier.Skipped, "other": applier.RolledBack}, got,
		"other converged, then the failed run was rolled back whole")
	assert.NoFileExists(t, f.path("/child"))
	assert.NoFileExists(t, f.path("/other"))
	cfg, msg := r.FirstFailure()
	assert.Equal(t, "base", cfg)
	assert.Contains(t, msg, `map has no entry for key "missing"`)
}

func TestRunStopsBetweenConfigurationsWhenCancelled(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "files:\n  - {path: /a, content: a}\n",
		"b.yaml": "files:\n  - {path: /b, content: b}\n",
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := f.applier.Run(ctx, runkind.Full, f.set, f.snap(), []string{"a", "b"})
	assert.True(t, r.Aborted)
	assert.Equal(t, applier.Aborted, r.Outcomes[0].Result)
	assert.NoFileExists(t, f.path("/a"))
}

func TestAFileMovedBetweenConfigurationsIsNotPruned(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "subscribes: [s]\nfiles:\n  - {path: '/x/{{ .Object.ID }}', for_each: s, content: a}\n",
		"b.yaml": "files:\n  - {path: /x/y, content: b}\n",
	})
	f.put("s/y", `{}`)
	r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"a"})
	require.NoError(t, r.Err)

	f.del("s/y") // y now belongs to b only, which runs after a
	r = f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"b", "a"})
	require.NoError(t, r.Err)
	assert.Equal(t, "b", f.read("/x/y"))
}

func TestTwoConfigurationsRenderingOnePathIsAnError(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "subscribes: [s]\nfiles:\n  - {path: '/etc/{{ .Object.Data.f }}', for_each: s, content: a}\n",
		"b.yaml": "files:\n  - {path: /etc/shared.conf, content: b}\n",
	})
	f.put("s/x", `{"f":"shared.conf"}`)
	r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"a", "b"})
	require.True(t, r.Failed())
	assert.EqualError(t, r.Err, `configuration b: file /etc/shared.conf is also written by configuration "a"`)
	assert.NoFileExists(t, f.path("/etc/shared.conf"), "the first writer's file is rolled back with the failed run")
}

func TestAChangedRunTrustsWhatItWroteAndAFullRunRepairsDrift(t *testing.T) {
	f := newFixture(t, map[string]string{"web.yaml": sites})
	f.put("sites/a", `{"name":"a"}`)
	f.put("sites/b", `{"name":"b"}`)
	snap := f.snap()
	r := f.applier.Run(context.Background(), runkind.Full, f.set, snap, []string{"web"})
	require.NoError(t, r.Err)

	require.NoError(t, os.WriteFile(f.path("/etc/nginx/sites/b.conf"), []byte("edited by hand\n"), 0o640))
	r = f.applier.Run(context.Background(), runkind.Changed, f.set, snap, []string{"web"})
	require.NoError(t, r.Err)
	assert.Equal(t, applier.Unchanged, r.Outcomes[0].Result, "an event-driven run does not re-read files it wrote")
	assert.Equal(t, "edited by hand\n", f.read("/etc/nginx/sites/b.conf"))

	r = f.applier.Run(context.Background(), runkind.Full, f.set, snap, []string{"web"})
	require.NoError(t, r.Err)
	assert.Equal(t, 1, r.Outcomes[0].Updated, "a full run repairs the drift")
	assert.Equal(t, "server_name b;\n", f.read("/etc/nginx/sites/b.conf"))
}

func TestAChangedRunAfterAFailedValidateChecksTheDisk(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "broken")
	f := newFixture(t, map[string]string{"web.yaml": sites + "validate: [test, '!', -e, " + strconv.Quote(marker) + "]\n"})
	f.put("sites/a", `{"name":"a"}`)
	r := f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"web"})
	require.NoError(t, r.Err)

	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	f.put("sites/a", `{"name":"a2"}`)
	r = f.applier.Run(context.Background(), runkind.Changed, f.set, f.snap(), []string{"web"})
	require.Error(t, r.Err)
	assert.Equal(t, "server_name a;\n", f.read("/etc/nginx/sites/a.conf"), "rolled back")

	require.NoError(t, os.Remove(marker))
	r = f.applier.Run(context.Background(), runkind.Changed, f.set, f.snap(), []string{"web"})
	require.NoError(t, r.Err)
	assert.Equal(t, "server_name a2;\n", f.read("/etc/nginx/sites/a.conf"), "the rolled-back file is not trusted")
}

func TestCommandsGetTheNodeRootAndConfigurationInTheirEnvironment(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	t.Setenv("CCM_PASSWORD", "secret")
	f := newFixture(t, map[string]string{"web.yaml": `
files:
  - path: /etc/x.conf
    content: "x\n"
validate: [sh, -c, 'echo "$CCM_NODE $CCM_ROOT $CCM_CONFIG ${CCM_PASSWORD:-none} $(pwd)" > "$0"', ` + strconv.Quote(out) + `]
`})
	_, err := f.apply("web")
	require.NoError(t, err)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "n1 "+f.root+" web none "+f.dir+"\n", string(b),
		"CCM_NODE, CCM_ROOT, CCM_CONFIG set; the etcd password not passed; run in the configuration directory")
}

func (f *fixture) run() *applier.Report {
	names := f.applier.SelectAll(f.set)
	return f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), names)
}

func TestRemovalsRunInReverseDependencyOrder(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	onChange := `on_change: [[sh, -c, 'echo "$CCM_CONFIG" >> "$0"', ` + strconv.Quote(log) + `]]`
	f := newFixture(t, map[string]string{
		"users.yaml": "files: [{path: '/home/{{ .Object.ID }}/.profile', for_each: sites, content: x}]\n" + onChange,
		"pools.yaml": "depends_on: [users]\nfiles: [{path: '/pools/{{ .Object.ID }}.conf', for_each: sites, content: x}]\n" + onChange,
		"vhosts.yaml": "depends_on: [pools]\nfiles: [{path: '/vhosts/{{ .Object.ID }}.conf', for_each: sites, content: x}]\n" +
			// The vhost's socket must still exist when the vhost goes.
			`validate: [sh, -c, 'for f in vhosts/*.conf; do [ ! -e "$f" ] || [ -e "pools/$(basename "$f")" ] || exit 1; done', ]` + "\n" + onChange,
	})
	f.applier = applier.New(applier.Options{Root: f.root, StateDir: filepath.Join(f.tmp, "state"), ConfigDir: f.root, Node: render.Node{Name: "n1"}})
	f.put("sites/a", `{}`)
	f.put("sites/b", `{}`)
	require.NoError(t, f.run().Err)
	b, _ := os.ReadFile(log)
	assert.Equal(t, "users\npools\nvhosts\n", string(b), "creations in dependency order")

	require.NoError(t, os.Remove(log))
	f.del("sites/b")
	r := f.run()
	require.NoError(t, r.Err)
	b, _ = os.ReadFile(log)
	assert.Equal(t, "vhosts\npools\nusers\n", string(b), "removals in reverse dependency order")
	assert.NoFileExists(t, f.path("/pools/b.conf"))
	assert.NoFileExists(t, f.path("/home/b/.profile"))
}

func TestFilesOfADeletedConfigurationAreRemovedByAFullRun(t *testing.T) {
	f := newFixture(t, map[string]string{
		"keep.yaml": "files: [{path: /etc/keep, content: k}]\n",
		"gone.yaml": "files: [{path: /etc/gone, content: g}, {path: /etc/moved, content: m}]\n",
	})
	require.NoError(t, os.WriteFile(f.path("/operator-file"), []byte("mine"), 0o644))
	require.NoError(t, f.run().Err)
	require.FileExists(t, f.path("/etc/gone"))

	require.NoError(t, os.Remove(filepath.Join(f.dir, "gone.yaml")))
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "keep.yaml"), []byte("files: [{path: /etc/keep, content: k}, {path: /etc/moved, content: m2}]\n"), 0o644))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set

	names := f.applier.SelectAll(set)
	plans, err := f.applier.PlanAll(set, f.snap(), names)
	require.NoError(t, err)
	var removals []string
	for _, p := range plans {
		for _, c := range p.Changes {
			if c.Action == applier.Remove {
				removals = append(removals, p.Config.Name+" "+c.Path)
			}
		}
	}
	assert.Equal(t, []string{"gone /etc/gone"}, removals, "plan shows the removal; a file another configuration took over stays")

	r := f.run()
	require.NoError(t, r.Err)
	assert.NoFileExists(t, f.path("/etc/gone"))
	assert.Equal(t, "m2", f.read("/etc/moved"))
	assert.Equal(t, "mine", f.read("/operator-file"), "a file ccm never wrote stays")
	assert.NoFileExists(t, filepath.Join(f.tmp, "state", "configs", "gone.json"), "the manifest is forgotten")
	assert.Empty(t, f.applier.Run(context.Background(), runkind.Full, set, f.snap(), names).Outcomes[0].Error)
}

func TestAReadOnlyStateDirectoryChangesNothing(t *testing.T) {
	f := newFixture(t, map[string]string{"c.yaml": "files: [{path: /etc/x, content: x}]\non_change: [[\"true\"]]\n"})
	state := filepath.Join(f.tmp, "state")
	require.NoError(t, os.MkdirAll(state, 0o755))
	// root ignores permissions: a read-only file system it is.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", state).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a read-only tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", state).Run() })
	_, err := f.apply("c")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "state")
	assert.NoFileExists(t, f.path("/etc/x"), "nothing renamed before the intent was durable")
}

func TestACommandThatStartsADaemonSucceedsAndLeavesItRunning(t *testing.T) {
	pid := filepath.Join(t.TempDir(), "daemon.pid")
	// An init script's "start": the daemon keeps stdout and stderr open.
	f := newFixture(t, map[string]string{"c.yaml": `
files: [{path: /etc/x, content: x}]
on_change: [[sh, -c, 'sleep 60 & echo $! > "$0"; echo started', ` + strconv.Quote(pid) + `]]
`})
	t.Cleanup(func() {
		if b, err := os.ReadFile(pid); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	_, err := f.apply("c")
	require.NoError(t, err, "exit 0 is success, whatever a child does with stdout")
	b, err := os.ReadFile(pid)
	require.NoError(t, err)
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	assert.NoError(t, syscall.Kill(n, 0), "the daemon is left running")
	_, err = f.apply("c")
	require.NoError(t, err)
}

func TestACollisionIsAnErrorInAnEventDrivenRunToo(t *testing.T) {
	f := newFixture(t, map[string]string{
		"a.yaml": "files: [{path: '/x/{{ .Object.Data.name }}', for_each: as, content: a}]\n",
		"b.yaml": "files: [{path: '/x/{{ .Object.Data.name }}', for_each: bs, content: b}]\n",
	})
	f.put("as/1", `{"name":"foo"}`)
	f.put("bs/1", `{"name":"bar"}`)
	require.NoError(t, f.run().Err)

	f.put("bs/1", `{"name":"foo"}`) // only b subscribes to bs: only b runs
	r := f.applier.Run(context.Background(), runkind.Changed, f.set, f.snap(), []string{"b"})
	require.Error(t, r.Err)
	assert.Contains(t, r.Err.Error(), `file /x/foo is also written by configuration "a"`)
	assert.Equal(t, "a", f.read("/x/foo"), "a's file is neither overwritten")
	assert.Equal(t, "b", f.read("/x/bar"), "nor is b's removed")
}

func TestAStateDirectoryDeletedUnderARunningAgentIsWrittenAgain(t *testing.T) {
	f := newFixture(t, map[string]string{"c.yaml": "files: [{path: '/x/{{ .Object.ID }}', for_each: s, content: x}]\n"})
	f.put("s/a", `{}`)
	f.put("s/b", `{}`)
	require.NoError(t, f.run().Err)
	state := filepath.Join(f.tmp, "state")
	require.NoError(t, os.RemoveAll(state))
	require.NoError(t, f.run().Err)
	assert.FileExists(t, filepath.Join(state, "configs", "c.json"), "a full run writes the manifest again, even with nothing to change")

	require.NoError(t, os.RemoveAll(state))
	f.del("s/b") // meanwhile, an object goes
	require.NoError(t, f.run().Err)
	assert.NoFileExists(t, f.path("/x/b"), "its file is still pruned")
	assert.FileExists(t, f.path("/x/a"))
	b, err := os.ReadFile(filepath.Join(state, "configs", "c.json"))
	require.NoError(t, err, "the manifest is written again")
	assert.Contains(t, string(b), `"/x/a"`)
	assert.NotContains(t, string(b), `"/x/b"`)
}

func TestAFileCcmDidNotWriteIsAdoptedAndItsOriginalRestored(t *testing.T) {
	f := newFixture(t, map[string]string{"motd.yaml": "files: [{path: /etc/motd, content: \"managed\\n\", mode: \"0644\"}]\n", "other.yaml": "files: [{path: /x, content: x}]\n"})
	require.NoError(t, os.MkdirAll(f.path("/etc"), 0o755))
	require.NoError(t, os.WriteFile(f.path("/etc/motd"), []byte("the operator's motd\n"), 0o600))

	names := f.applier.SelectAll(f.set)
	plans, err := f.applier.PlanAll(f.set, f.snap(), names)
	require.NoError(t, err)
	require.Len(t, plans[0].Changes, 1)
	assert.Equal(t, applier.Adopt, plans[0].Changes[0].Action, "plan shows the adoption")

	require.NoError(t, f.run().Err)
	assert.Equal(t, "managed\n", f.read("/etc/motd"))
	require.NoError(t, f.run().Err)

	require.NoError(t, os.Remove(filepath.Join(f.dir, "motd.yaml")))
	set, err := configs.Load(f.dir)
	require.NoError(t, err)
	f.set = set
	require.NoError(t, f.run().Err)
	assert.Equal(t, "the operator's motd\n", f.read("/etc/motd"), "pruning puts the original back, never deletes it")
	fi, err := os.Stat(f.path("/etc/motd"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "with its mode")
	entries, _ := os.ReadDir(filepath.Join(f.tmp, "state", "adopted"))
	assert.Empty(t, entries, "the original is forgotten once it is back")
}

// A path of object data never takes over a file ccm did not write: a
// customer's sites/www would have replaced Debian's www.conf pool. The
// object is held, the file is untouched.
func TestAFileOfObjectDataNeverAdoptsOne(t *testing.T) {
	f := newFixture(t, map[string]string{"pools.yaml": "files: [{path: '/pool.d/{{ .Object.ID }}.conf', for_each: sites, content: '{{ .Object.ID }}', mode: \"0644\"}]\n"})
	require.NoError(t, os.MkdirAll(f.path("/pool.d"), 0o755))
	require.NoError(t, os.WriteFile(f.path("/pool.d/www.conf"), []byte("[www]\nuser = www-data\n"), 0o644))
	f.put("sites/www", `{}`)
	f.put("sites/shop", `{}`)
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"sites/www"}, r.Held)
	assert.Equal(t, "[www]\nuser = www-data\n", f.read("/pool.d/www.conf"))
	assert.Equal(t, "shop", f.read("/pool.d/shop.conf"))
}

func TestAStateDirectoryOfAnotherRootIsRefused(t *testing.T) {
	f := newFixture(t, map[string]string{"c.yaml": "files: [{path: '/x/{{ .Object.ID }}', for_each: s, content: x}]\n"})
	f.put("s/a", `{}`)
	require.NoError(t, f.run().Err)

	other := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(other, "x"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(other, "x", "a"), []byte("not ccm's\n"), 0o644))
	ap := applier.New(applier.Options{Root: other, StateDir: filepath.Join(f.tmp, "state"), Node: render.Node{Name: "n1"}})
	f.del("s/a")
	r := ap.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"c"})
	require.Error(t, r.Err)
	assert.Contains(t, r.Err.Error(), "was written for root "+f.root+", not "+other)
	b, err := os.ReadFile(filepath.Join(other, "x", "a"))
	require.NoError(t, err)
	assert.Equal(t, "not ccm's\n", string(b), "nothing under the other root is touched")
}

func TestStalledMeasuresARunThatMakesNoProgress(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	f := newFixture(t, map[string]string{"c.yaml": "files: [{path: /x, content: x}]\nvalidate: [sh, -c, 'while [ ! -e \"$0\" ]; do sleep 0.05; done', " + strconv.Quote(gate) + "]\n"})
	assert.Zero(t, f.applier.Stalled(), "idle is not stalled")
	done := make(chan struct{})
	go func() { defer close(done); f.run() }()
	deadline := time.Now().Add(20 * time.Second)
	for f.applier.Stalled() < 200*time.Millisecond { // the run waits in validate
		require.True(t, time.Now().Before(deadline), "Stalled grows while one command runs")
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	<-done
	assert.Zero(t, f.applier.Stalled())
}

// TestAPathSwappedForASymlinkMidRunIsRefused: the customer who owns
// /home/alice swaps a managed file, or a managed directory, for a symlink
// to a root-owned place (inside the root, as /etc is with --root /) right
// between ccm's plan and its write. A check command does the swap, so the
// race is won every time. No symlink is followed: a file whose mode was
// wrong gets a fresh copy renamed over the symlink (an inode is never
// chmodded in place), a directory is refused.
func TestAPathSwappedForASymlinkMidRunIsRefused(t *testing.T) {
	tests := []struct {
		name, files string
		replaced    bool // the symlink is replaced, not refused
	}{
		{"file: chmod", `
  - {path: /home/alice/.forward, content: "alice@example.com\n", mode: "0640"}
  - {path: /home/alice/trigger, content: "new\n", check: [sh, -c, 'ln -sfn "$0/etc/shadow" "$0/home/alice/.forward"', ROOT]}`, true},
		{"directory: write", `
  - {path: /home/alice/conf/a.conf, content: "new\n", check: [sh, -c, 'mv "$0/home/alice/conf" "$0/home/alice/conf.old" && ln -sfn "$0/etc" "$0/home/alice/conf"', ROOT]}
  - {path: /home/alice/conf/b.conf, content: "new\n"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			f := newFixture(t, map[string]string{"c.yaml": "files:" + strings.ReplaceAll(tt.files, "ROOT", strconv.Quote(root)) + "\n"})
			f.root = root
			f.applier = applier.New(applier.Options{Root: root, StateDir: filepath.Join(f.tmp, "state"), ConfigDir: f.dir, Node: render.Node{Name: "n1"}})
			require.NoError(t, os.MkdirAll(f.path("/etc"), 0o755))
			require.NoError(t, os.WriteFile(f.path("/etc/shadow"), []byte("secret\n"), 0o600))
			require.NoError(t, os.MkdirAll(f.path("/home/alice/conf"), 0o755))
			require.NoError(t, os.MkdirAll(f.path("/home/alice/a"), 0o755))
			require.NoError(t, os.WriteFile(f.path("/home/alice/.forward"), []byte("alice@example.com\n"), 0o644))

			r := f.run()
			if tt.replaced {
				require.NoError(t, r.Err)
				fi, err := os.Lstat(f.path("/home/alice/.forward"))
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o640), fi.Mode(), "a regular file, renamed over the symlink")
			} else {
				require.Error(t, r.Err, "the swapped path is refused")
				assert.Contains(t, r.Err.Error(), "symlink")
			}
			fi, err := os.Stat(f.path("/etc/shadow"))
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the file the symlink points to is not chmodded")
			entries, err := os.ReadDir(f.path("/etc"))
			require.NoError(t, err)
			assert.Len(t, entries, 1, "nothing is written through the symlinked directory")
		})
	}
}

// A state file that is not a regular file (a FIFO left by someone) is
// named as such, and nothing is written.
func TestAStateFileThatIsAFIFOIsNamed(t *testing.T) {
	f := newFixture(t, map[string]string{"c.yaml": "files:\n  - {path: /x, content: \"x\\n\"}\n"})
	state := filepath.Join(f.tmp, "state", "configs")
	require.NoError(t, os.MkdirAll(state, 0o700))
	require.NoError(t, unix.Mkfifo(filepath.Join(state, "c.json"), 0o600))
	_, err := f.apply("c")
	require.Error(t, err)
	assert.Contains(t, err.Error(), filepath.Join(state, "c.json")+" is not a regular file (a FIFO)")
	assert.NoFileExists(t, f.path("/x"))
}

// The events after the first record the manifest they found without
// listing it again (the same files); what they record must stay what a
// full listing would, through a rollback and a removal.
func TestChangedRunsWithTheSameFilesKeepTheManifestWhole(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "broken")
	f := newFixture(t, map[string]string{"web.yaml": sites + "validate: [test, '!', -e, " + strconv.Quote(marker) + "]\n"})
	for _, id := range []string{"a", "b", "c"} {
		f.put("sites/"+id, `{"name":"`+id+`"}`)
	}
	manifest := func() (files []string, objects map[string]string) {
		raw, err := os.ReadFile(filepath.Join(f.tmp, "state", "configs", "web.json"))
		require.NoError(t, err)
		var m struct {
			Files   []string          `json:"files"`
			Objects map[string]string `json:"objects"`
		}
		require.NoError(t, json.Unmarshal(raw, &m))
		return m.Files, m.Objects
	}
	run := func() *applier.Report {
		return f.applier.Run(context.Background(), runkind.Changed, f.set, f.snap(), []string{"web"})
	}
	require.NoError(t, f.applier.Run(context.Background(), runkind.Full, f.set, f.snap(), []string{"web"}).Err)
	all := []string{"/etc/nginx/sites/a.conf", "/etc/nginx/sites/b.conf", "/etc/nginx/sites/c.conf"}
	objs := map[string]string{all[0]: "sites/a", all[1]: "sites/b", all[2]: "sites/c"}
	for i := range 3 {
		f.put("sites/b", fmt.Sprintf(`{"name":"b%d"}`, i))
		require.NoError(t, run().Err)
		files, objects := manifest()
		assert.Equal(t, all, files)
		assert.Equal(t, objs, objects)
	}
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	f.put("sites/c", `{"name":"c2"}`)
	require.Error(t, run().Err)
	files, objects := manifest()
	assert.Equal(t, all, files, "rolled back")
	assert.Equal(t, objs, objects)
	require.NoError(t, os.Remove(marker))
	require.NoError(t, run().Err)
	assert.Equal(t, "server_name c2;\n", f.read("/etc/nginx/sites/c.conf"))

	f.del("sites/a")
	require.NoError(t, run().Err)
	files, objects = manifest()
	assert.Equal(t, all[1:], files)
	assert.Equal(t, map[string]string{all[1]: "sites/b", all[2]: "sites/c"}, objects)
	assert.NoFileExists(t, f.path(all[0]))
	f.put("sites/b", `{"name":"b9"}`)
	require.NoError(t, run().Err)
	files, _ = manifest()
	assert.Equal(t, all[1:], files)
}
