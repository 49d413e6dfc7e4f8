package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// crashConfig is a configuration whose validate and on_change log to log;
// validate fails while marker exists, and on_change runs hangScript first
// if it exists (to be killed mid-command).
func crashConfig(t *testing.T, log, marker string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "site.yaml"), []byte(fmt.Sprintf(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
validate: [sh, -c, 'echo validate >> "$0"; test ! -e "$1"', %q, %q]
on_change:
  - [sh, -c, 'echo on_change >> "$0"; if [ -e "$1.hang" ]; then echo $$ > "$1.pid"; exec sleep 60; fi', %q, %q]
`, log, marker, log, marker)), 0o644))
	return dir
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// A run a crash interrupted is rolled back at the next start (its
// journal), then the run converges forward as usual: validate and
// on_change run for the change, and a change validate refuses never
// stays.
func TestACrashMidRunIsRolledBackAndConvergedAtTheNextStart(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	for _, step := range []string{"journaled", "renamed", "validated", "on_change"} {
		for _, validateFails := range []bool{false, true} {
			if validateFails && (step == "validated" || step == "on_change") {
				continue // validate passed before these steps
			}
			t.Run(fmt.Sprintf("%s/validate_fails=%v", step, validateFails), func(t *testing.T) {
				prefix := fmt.Sprintf("/crash-%s-%v", step, validateFails)
				dir := t.TempDir()
				log, marker := filepath.Join(dir, "log"), filepath.Join(dir, "broken")
				n := newNode(t, "n", crashConfig(t, log, marker), etcd.Endpoints())
				n.flags = []string{"--prefix", prefix}
				put := func(v string) {
					_, err := cli.Put(context.Background(), prefix+"/objects/sites/a", fmt.Sprintf(`{"v":%q}`, v))
					require.NoError(t, err)
				}
				put("v1")
				require.Equal(t, 0, n.run("", "apply", "--once").code)
				require.NoError(t, os.Remove(log))

				put("v2")
				if validateFails {
					require.NoError(t, os.WriteFile(marker, nil, 0o644))
				}
				crash(t, n, step, marker)
				if step == "renamed" || step == "validated" {
					assert.Equal(t, "v2\n", n.read("/sites/a.conf"), "the crash came after the rename")
				}
				assert.NotContains(t, readLog(log), "on_change\non_change", "nothing ran on_change twice yet")
				if step != "on_change" {
					journal, err := os.ReadFile(filepath.Join(n.state, "journal", "site.json"))
					require.NoError(t, err)
					assert.Contains(t, string(journal), `"same_files":true`, "an update of a file the manifest lists leaves the list out of the journal")
				}

				// The crashed run's lease is short (3 s), so that this run
				// waits little for it; this run's own is not, so that a
				// loaded machine cannot starve its keep-alive mid-run.
				r := n.run("", "apply", "--once", "--lock-ttl", "10s")
				if validateFails {
					assert.Equal(t, 1, r.code, "the run after the rollback fails validate: %s", r.stderr)
					assert.Equal(t, "v1\n", n.read("/sites/a.conf"), "restored byte for byte")
					assert.NotContains(t, readLog(log), "on_change", "a rejected change never reaches on_change")
					f, err := cluster.New(cli, cluster.Options{Prefix: prefix}).Failure(context.Background())
					require.NoError(t, err)
					require.NotNil(t, f, "the failure flag is raised")
					assert.Contains(t, f.Error, "validate failed")
					return
				}
				require.Equal(t, 0, r.code, r.stderr)
				assert.Equal(t, "v2\n", n.read("/sites/a.conf"))
				assert.Contains(t, readLog(log), "validate", "validate ran for the change")
				assert.Contains(t, readLog(log), "on_change", "on_change ran at least once after the change")
				assert.Equal(t, 0, n.run("", "plan").code, "nothing left to do")
				entries, _ := os.ReadDir(filepath.Join(n.state, "journal"))
				assert.Empty(t, entries, "the journal is gone")
				manifest, err := os.ReadFile(filepath.Join(n.state, "configs", "site.json"))
				require.NoError(t, err)
				assert.Contains(t, string(manifest), `"files":["/sites/a.conf"]`, "the manifest still lists the file")
			})
		}
	}
}

// crash runs apply --once and SIGKILLs it at step: a failpoint for the
// steps inside ccm, a real kill while on_change runs.
func crash(t *testing.T, n *node, step, marker string) {
	t.Helper()
	if step != "on_change" {
		n.env = []string{"CCM_CRASH_AT=" + step}
		r := n.run("", "apply", "--once", "--lock-ttl", "3s") // a fence check has 0.9 s of slack, not 0.5 s
		n.env = nil
		require.Equal(t, -1, r.code, "killed at %s: %s", step, r.stderr)
		return
	}
	require.NoError(t, os.WriteFile(marker+".hang", nil, 0o644))
	proc := n.start("apply", "--once", "--lock-ttl", "3s")
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(marker + ".pid"); return err == nil }, "on_change started")
	require.NoError(t, proc.Process.Signal(syscall.SIGKILL))
	_, _ = proc.Process.Wait()
	killPidFile(marker + ".pid")
	require.NoError(t, os.Remove(marker+".hang"))
}

// read returns a file under the node's root, or "" if it does not exist.
func (n *node) read(path string) string {
	b, _ := os.ReadFile(filepath.Join(n.root, path))
	return string(b)
}
