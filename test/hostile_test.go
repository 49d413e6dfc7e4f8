package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/test/etcdtest"
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

func TestHostileObjectsFailCleanlyAndTheAgentKeepsRunning(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	pwned := filepath.Join(t.TempDir(), "pwned")
	outside := t.TempDir() // a directory outside every root
	n := startAgent(t, etcd, "n", hostileConfig(t, pwned), agentConfig{debounce: 100 * time.Millisecond})

	// A good site, converged first: it must survive every attack intact.
	resp, err := cli.Put(ctx, "/ccm/objects/sites/good", `{"dir":"www","body":"good"}`)
	require.NoError(t, err)
	n.reported(t, resp.Header.Revision, cluster.ResultConverged)
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
				n.reported(t, resp.Header.Revision, cluster.ResultConverged)
				assert.True(t, strings.HasPrefix(n.read("/srv/www/sh.conf"), "$(touch"), "rendered verbatim")
				assert.NoFileExists(t, pwned, "no shell ran")
			} else {
				var f *cluster.Failure
				eventually(t, 20*time.Second, func() bool {
					f, _ = c.Failure(ctx)
					return f != nil
				}, "the run fails and raises the flag")
				assert.Contains(t, f.Error, tc.want)
				assert.Contains(t, f.Error, strings.TrimPrefix(tc.key, "sites/"), "the error names the object")
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
			_, err = c.Resume(ctx)
			require.NoError(t, err)
			eventually(t, 20*time.Second, func() bool {
				s := nodeStatus(t, cli, "n")
				f, _ := c.Failure(ctx)
				return f == nil && s != nil && s.Result == cluster.ResultConverged && s.Revision > 0 &&
					n.read("/srv/www/sh.conf") == ""
			}, "converged again after the object is gone")
		})
	}
}

func TestLargeObjectsAndBadKeysDoNotStopTheRollout(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	n := startAgent(t, etcd, "n", hostileConfig(t, filepath.Join(t.TempDir(), "pwned")), agentConfig{debounce: 100 * time.Millisecond})
	n.reported(t, 1, cluster.ResultConverged)

	big := strings.Repeat("x", 5<<20)
	_, err := cli.Put(ctx, "/ccm/objects/sites/big", `{"dir":"www","body":"`+big+`"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/ccm/objects/sites/bad$key", `{"dir":"www","body":"x"}`)
	require.NoError(t, err)
	resp, err := cli.Put(ctx, "/ccm/objects/sites/.hidden", `{"dir":"www","body":"x"}`)
	require.NoError(t, err)

	// Converged, not failed: keys outside the grammar are ignored.
	n.reported(t, resp.Header.Revision, cluster.ResultConverged)
	assert.Len(t, n.read("/srv/www/big.conf"), len(big)+1, "a 5 MB object renders")
	entries, err := os.ReadDir(filepath.Join(n.root, "srv", "www"))
	require.NoError(t, err)
	assert.Len(t, entries, 1, "ignored keys are never rendered")
}
