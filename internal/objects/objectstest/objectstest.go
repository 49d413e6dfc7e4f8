// Package objectstest builds object snapshots for tests and benchmarks.
package objectstest

import (
	"fmt"

	"github.com/ccm-dev/ccm/internal/objects"
)

// Sites returns n site objects under /ccm at revision rev, as the event
// benchmarks use them: site i has revision i+2, but site changed (-1:
// none), which has rev and a domain that says so.
func Sites(n, changed int, rev int64) *objects.Snapshot {
	bl := objects.NewBuilder("/ccm", rev, nil)
	for i := 0; i < n; i++ {
		r := int64(i + 2)
		if i == changed {
			r = rev
		}
		bl.Add(fmt.Sprintf("/ccm/objects/sites/site%05d", i),
			[]byte(fmt.Sprintf(`{"user":"u%d","domains":["s%d-%d.example.com"]}`, i, i, r)), r)
	}
	return bl.Snapshot()
}

// SiteEvents returns the snapshots of the event benchmarks over n sites:
// the first with none changed, then site 7, then site 7919, each one
// revision later.
func SiteEvents(n int) []*objects.Snapshot {
	return []*objects.Snapshot{Sites(n, -1, int64(n)+2), Sites(n, 7, int64(n)+3), Sites(n, 7919, int64(n)+4)}
}
