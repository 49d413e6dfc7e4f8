package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// Fencing reaches the disk. The lock holder is SIGSTOPped while its check
// runs, for longer than its lease: the other node takes the lock and runs
// its on_change meanwhile. Resumed, the first holder must not rename its
// file or run its on_change under the lock it lost: its own clock says the
// lease may have expired, so it stops, restores, and converges later on a
// new session. Before, it renamed and ran on_change alongside the other
// node (only its status write was refused), and logged converged.
func TestAHolderPausedPastItsLeaseNeverRenamesOrRunsOnChangeLate(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	log, checking := filepath.Join(dir, "on_change.log"), filepath.Join(dir, "checking")
	config := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(config, "sites.yaml"), []byte(fmt.Sprintf(`subscribes: [sites]
files:
  - path: /sites/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.v }}\n"
    check: [sh, -c, 'echo "$CCM_NODE" >> "$0"; sleep 3', %q]
on_change:
  - [sh, -c, 'echo "$CCM_NODE start $(date +%%s%%N)" >> "$0"; sleep 4; echo "$CCM_NODE end $(date +%%s%%N)" >> "$0"', %q]
timeout: 60s
`, checking, log)), 0o644))
	procs := map[string]*os.Process{}
	admin := etcd.Client(t)
	for _, name := range []string{"a", "b"} {
		n := newNode(t, name, config, etcd.Endpoints())
		procs[name] = n.startLogged(filepath.Join(dir, name+".log"), "agent", "--debounce", "0s", "--lock-ttl", "5s").Process
	}
	rev := putOn(t, admin, 1, "one")
	for _, name := range []string{"a", "b"} {
		eventually(t, 60*time.Second, func() bool {
			s := nodeStatus(t, admin, name)
			return s != nil && s.Result == "converged" && s.Revision >= rev
		}, "%s converges the first site", name)
	}
	require.NoError(t, os.WriteFile(checking, nil, 0o644))
	rev = putOn(t, admin, 1, "two")
	var first string
	eventually(t, 30*time.Second, func() bool {
		b, _ := os.ReadFile(checking)
		first = strings.TrimSpace(string(b))
		return first != ""
	}, "a node checks the new file")
	first = strings.Fields(first)[0]
	require.NoError(t, procs[first].Signal(syscall.SIGSTOP))
	time.Sleep(9 * time.Second) // the pause: past the 5 s lease, while the other node runs
	require.NoError(t, procs[first].Signal(syscall.SIGCONT))
	for _, name := range []string{"a", "b"} {
		eventually(t, 60*time.Second, func() bool {
			s := nodeStatus(t, admin, name)
			return s != nil && s.Result == "converged" && s.Revision >= rev
		}, "%s converges the second site", name)
	}
	runs := intervals(t, log)
	for i := 1; i < len(runs); i++ {
		assert.GreaterOrEqual(t, runs[i].start, runs[i-1].end, "on_change of %s overlaps that of %s: %+v", runs[i].node, runs[i-1].node, runs)
	}
	b, err := os.ReadFile(filepath.Join(dir, first+".log"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "configuration stopped: the lock was lost", "the paused holder stopped before its next step")
}
