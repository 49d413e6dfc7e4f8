package test

import (
	"bytes"
	"context"
	"errors"
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

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// hostileConfig renders object data into paths and content, and runs
// commands that would betray a shell.
func hostileConfig(t *testing.T, pwned string) string {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(fmt.Sprintf(`subscribes: [sites]
files:
  - path: /srv/{{ .Object.Data.dir }}/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.body }}\n"
    check: [test, -f, "{{ .Staged }}"]
validate: [test, "!", -e, %q]
on_change:
  - ["true"]
`, pwned)), 0o644))
	return dir
}

func TestHostileObjectsAreQuarantinedAndTheAgentKeepsRunning(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	pwned := filepath.Join(t.TempDir(), "pwned")
	outside := t.TempDir() // a directory outside every root
	n := startAgent(t, etcd, "n", hostileConfig(t, pwned), agentConfig{debounce: 100 * time.Millisecond})

	// A good site, converged first: it must survive every attack intact.
	resp, err := cli.Put(ctx, "/ccm/objects/sites/good", `{"dir":"www","body":"good"}`)
	require.NoError(t, err)
	n.reported(t, resp.Header.Revision, api.ResultConverged)
	require.Equal(t, "good\n", n.read("/srv/www/good.conf"), "good site")
	// A symlink planted inside the root, pointing outside it.
	require.NoError(t, os.Symlink(outside, filepath.Join(n.root, "srv", "planted")))

	c := cluster.New(cli, cluster.Options{})
	cases := []struct {
		name, key, value, want string
	}{
		{"traversal", "sites/up", `{"dir":"../../..` + outside + `","body":"x"}`, "escapes the root"},
		{"absolute path", "sites/abs", `{"dir":"` + outside + `","body":"x"}`, "escapes the root"},
		{"NUL in path", "sites/nul", `{"dir":"a\u0000b","body":"x"}`, "contains a control character"},
		{"overlong name", "sites/long", `{"dir":"` + strings.Repeat("x", 300) + `","body":"x"}`, "longer than 255 bytes"},
		{"planted symlink", "sites/link", `{"dir":"planted","body":"x"}`, "resolves to " + outside},
		{"invalid JSON", "sites/json", `{"dir":`, "object /ccm/objects/sites/json: value is not valid JSON"},
		{"not an object", "sites/arr", `["www"]`, "object /ccm/objects/sites/arr: value is a JSON array"},
		{"not UTF-8", "sites/utf", "{\"dir\":\"www\",\"body\":\"\xff\"}", "object /ccm/objects/sites/utf: value is not valid UTF-8"},
		{"shell metacharacters", "sites/sh", `{"dir":"www","body":"$(touch ` + pwned + `); rm -rf /; ` + "`touch " + pwned + "`" + `"}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := cli.Put(ctx, "/ccm/objects/"+tc.key, tc.value)
			require.NoError(t, err)
			if tc.want == "" { // harmless data: it converges, verbatim
				n.reported(t, resp.Header.Revision, api.ResultConverged)
				assert.True(t, strings.HasPrefix(n.read("/srv/www/sh.conf"), "$(touch"), "rendered verbatim")
				assert.NoFileExists(t, pwned, "no shell ran")
			} else {
				var q []api.Quarantine
				eventually(t, 20*time.Second, func() bool {
					q, _ = c.Quarantines(ctx)
					return len(q) == 1
				}, "the object is quarantined")
				assert.Equal(t, tc.key, q[0].Object())
				assert.Equal(t, resp.Header.Revision, q[0].Revision)
				assert.Contains(t, q[0].Error, tc.want)
				assert.Contains(t, q[0].Error, strings.TrimPrefix(tc.key, "sites/"), "the error names the object")
				n.reported(t, resp.Header.Revision, api.ResultConverged)
				f, err := c.Failure(ctx)
				require.NoError(t, err)
				assert.Nil(t, f, "one bad object never raises the flag")
			}
			entries, err := os.ReadDir(outside)
			require.NoError(t, err)
			assert.Empty(t, entries, "nothing written outside the root")
			assert.Equal(t, "good\n", n.read("/srv/www/good.conf"), "files on disk unchanged")
			select {
			case err := <-n.done:
				t.Fatalf("agent stopped: %v", err)
			default:
			}

			_, err = cli.Delete(ctx, "/ccm/objects/"+tc.key)
			require.NoError(t, err)
			eventually(t, 20*time.Second, func() bool {
				s := nodeStatus(t, cli, "n")
				q, _ := c.Quarantines(ctx)
				return len(q) == 0 && s != nil && s.Result == api.ResultConverged && s.Revision > 0 &&
					n.read("/srv/www/sh.conf") == ""
			}, "converged after the object is gone, its quarantine lifted")
		})
	}
}

func TestLargeObjectsAndBadKeysDoNotStopTheRollout(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	n := startAgent(t, etcd, "n", hostileConfig(t, filepath.Join(t.TempDir(), "pwned")), agentConfig{debounce: 100 * time.Millisecond})
	n.reported(t, 1, api.ResultConverged)

	big := strings.Repeat("x", 5<<20)
	_, err := cli.Put(ctx, "/ccm/objects/sites/big", `{"dir":"www","body":"`+big+`"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/ccm/objects/sites/bad$key", `{"dir":"www","body":"x"}`)
	require.NoError(t, err)
	resp, err := cli.Put(ctx, "/ccm/objects/sites/.hidden", `{"dir":"www","body":"x"}`)
	require.NoError(t, err)

	// Converged, not failed: keys outside the grammar are ignored.
	n.reported(t, resp.Header.Revision, api.ResultConverged)
	assert.Len(t, n.read("/srv/www/big.conf"), len(big)+1, "a 5 MB object renders")
	entries, err := os.ReadDir(filepath.Join(n.root, "srv", "www"))
	require.NoError(t, err)
	assert.Len(t, entries, 1, "ignored keys are never rendered")
}

// spinConfig renders a template that loops over an object's count without
// writing: Go cannot stop it.
func spinConfig(t *testing.T, renderTimeout string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pools.yaml"), []byte(`subscribes: [pools]
render_timeout: `+renderTimeout+`
files:
  - path: '/pools/{{ .Object.ID }}.conf'
    for_each: pools
    content: "{{ range $i := (int .Object.Data.workers) }}{{ end }}workers\n"
`), 0o644))
	return dir
}

func TestAStuckRenderRaisesTheFlagAndTheAgentExits(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	_, err := cli.Put(context.Background(), "/ccm/objects/pools/evil", `{"workers": 1e12}`)
	require.NoError(t, err)
	n := newNode(t, "n", spinConfig(t, "1s"), etcd.Endpoints())
	proc := n.start("agent", "--debounce", "0s")
	exited := make(chan int, 1)
	go func() { st, _ := proc.Process.Wait(); exited <- st.ExitCode() }()
	select {
	case code := <-exited:
		assert.NotEqual(t, 0, code, "the agent exits non-zero for systemd to restart it")
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not exit")
	}
	c := cluster.New(cli, cluster.Options{})
	f, err := c.Failure(context.Background())
	require.NoError(t, err)
	require.NotNil(t, f, "the flag is raised before the agent exits")
	assert.Contains(t, f.Error, "render stuck and cannot be stopped")
	assert.Contains(t, f.Error, "/pools/evil.conf (object pools/evil)")

	// Restarted, the agent is halted by the flag and renders nothing.
	n.start("agent", "--debounce", "0s")
	eventually(t, 30*time.Second, func() bool {
		s, err := c.Status(context.Background(), "n")
		return err == nil && s != nil && s.Result == api.ResultHalted
	}, "the restarted agent reports halted")
	assert.Empty(t, n.read("/pools/evil.conf"))
}

func TestSIGTERMStopsTheAgentMidRender(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	_, err := etcd.Client(t).Put(context.Background(), "/ccm/objects/pools/evil", `{"workers": 1e12}`)
	require.NoError(t, err)
	n := newNode(t, "n", spinConfig(t, "1h"), etcd.Endpoints())
	proc := n.start("agent", "--debounce", "0s")
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 30*time.Second, func() bool { return nodeView(t, c, "n").State == cluster.StateRunning }, "the agent renders, holding the lock")
	// Mid-render is when the render spins: the agent has burnt half a
	// second of CPU since it took the lock.
	spun := cpuTime(t, proc.Process.Pid)
	eventually(t, 30*time.Second, func() bool { return cpuTime(t, proc.Process.Pid)-spun >= 500*time.Millisecond }, "the agent spins in the render")
	start := time.Now()
	require.NoError(t, proc.Process.Signal(syscall.SIGTERM))
	st, err := proc.Process.Wait()
	require.NoError(t, err)
	assert.Equal(t, 0, st.ExitCode())
	assert.Less(t, time.Since(start), 10*time.Second, "SIGTERM ends the agent within seconds, mid-render")
	v := nodeView(t, c, "n")
	assert.NotEqual(t, cluster.StateRunning, v.State, "the lock is released")
}

// cpuTime is the CPU time the process pid has used, as the kernel reports
// it (utime and stime of /proc/PID/stat, in clock ticks of 10 ms).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:])) // after the command's name
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	require.NoError(t, errors.Join(err1, err2))
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
