package applier_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/render"
)

// checkAllSites is a configuration whose whole-set check appends one line
// per run to log and refuses the files whose first line is not "ok",
// naming each, as nginx -t names the file and line it stops at.
func checkAllSites(log string) string {
	return `
subscribes: [sites]
files:
  - path: /etc/nginx/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.body }}\n"
    check_all: [sh, -c, 'echo "$#" >> "$0"; rc=0; for f; do grep -q "^ok" "$f" || { echo "bad line in $f:1" >&2; rc=1; }; done; exit $rc', ` + strconv.Quote(log) + `]
`
}

func (f *fixture) checkRuns(log string) []string {
	b, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(f.t, err)
	return strings.Fields(string(b))
}

// Two bad sites among 64 are found by bisecting the whole-set check, and
// quarantined exactly as per-file checks would: the 62 others are written,
// the two are left out, each named with its final path. The bound is
// search's, k·(log2(n)+1)+1 runs for k bad files (64 per-file checks
// before), the least that keeps one bad file within log2(n)+2;
// site00 and site63 are one of the 961 pairs that cost 15 (every pair
// is run in TestBisectFindsTwoBadSitesOf64InAtMost15Runs).
func TestAWholeSetCheckFindsTwoBadSitesOf64ByBisection(t *testing.T) {
	t.Parallel()
	log := filepath.Join(t.TempDir(), "runs")
	f := newFixture(t, map[string]string{"web.yaml": checkAllSites(log)})
	bad := map[string]bool{"site00": true, "site63": true}
	for i := range 64 {
		id := fmt.Sprintf("site%02d", i)
		body := "ok " + id
		if bad[id] {
			body = "broken"
		}
		f.put("sites/"+id, `{"body":"`+body+`"}`)
	}
	r := f.run()
	require.NoError(t, r.Err, "two customers' bad sites do not fail the configuration")

	runs := f.checkRuns(log)
	assert.LessOrEqual(t, len(runs), 2*(int(math.Log2(64))+1)+1, "check runs (files per run: %v)", runs)
	assert.Equal(t, "64", runs[0], "the first run checks the whole set")
	require.Len(t, r.Quarantined, 2)
	for i, id := range []string{"site00", "site63"} {
		q := r.Quarantined[i]
		assert.Equal(t, "web", q.Config)
		assert.Equal(t, "sites/"+id, q.Type+"/"+q.ID)
		assert.Contains(t, q.Error, "bad line in "+f.path("/etc/nginx/"+id+".conf")+":1", "the error names the final path, never the staged copy")
		assert.NoFileExists(t, f.path("/etc/nginx/"+id+".conf"))
	}
	for i := range 64 {
		id := fmt.Sprintf("site%02d", i)
		if !bad[id] {
			assert.Equal(t, "ok "+id+"\n", f.read("/etc/nginx/"+id+".conf"))
		}
	}
}

// A set the check accepts costs one run, whatever its size.
func TestAWholeSetCheckThatPassesRunsOnce(t *testing.T) {
	t.Parallel()
	log := filepath.Join(t.TempDir(), "runs")
	f := newFixture(t, map[string]string{"web.yaml": checkAllSites(log)})
	for i := range 50 {
		f.put(fmt.Sprintf("sites/site%02d", i), `{"body":"ok"}`)
	}
	r := f.run()
	require.NoError(t, r.Err)
	assert.Equal(t, []string{"50"}, f.checkRuns(log))
	assert.Empty(t, r.Quarantined)
}

// A whole-set check that refuses every object fails the configuration, as
// per-file checks do, and nothing is written.
func TestAWholeSetCheckThatRefusesEveryObjectFailsTheConfiguration(t *testing.T) {
	t.Parallel()
	log := filepath.Join(t.TempDir(), "runs")
	f := newFixture(t, map[string]string{"web.yaml": checkAllSites(log)})
	for _, id := range []string{"a", "b", "c", "d"} {
		f.put("sites/"+id, `{"body":"broken"}`)
	}
	r := f.run()
	require.ErrorIs(t, r.Err, render.ErrEveryObject)
	for _, id := range []string{"a", "b", "c", "d"} {
		assert.NoFileExists(t, f.path("/etc/nginx/"+id+".conf"))
	}
}

// Per-file checks run at the same time, up to CheckWorkers: each check
// here waits until the other has started, which a serial run never lets
// happen.
func TestPerFileChecksRunOnTheBoundedPool(t *testing.T) {
	t.Parallel()
	meet := t.TempDir()
	f := newFixture(t, map[string]string{"web.yaml": `
subscribes: [sites]
files:
  - path: /etc/nginx/{{ .Object.ID }}.conf
    for_each: sites
    content: "ok\n"
    check: [sh, -c, 'touch "$0/$(basename "$1")"; i=0; while [ "$(ls "$0" | wc -l)" -lt 2 ]; do i=$((i+1)); [ $i -lt 1000 ] || { echo "alone" >&2; exit 1; }; sleep 0.01; done', ` + strconv.Quote(meet) + `, "{{ .Path }}"]
`})
	f.applier = applier.New(applier.Options{Root: f.root, StateDir: filepath.Join(f.tmp, "state"), ConfigDir: f.dir, Node: render.Node{Name: "n1"}, CheckWorkers: 2})
	f.put("sites/a", `{}`)
	f.put("sites/b", `{}`)
	r := f.run()
	require.NoError(t, r.Err, "the two checks ran at the same time")
	assert.FileExists(t, f.path("/etc/nginx/a.conf"))
	assert.FileExists(t, f.path("/etc/nginx/b.conf"))
}
