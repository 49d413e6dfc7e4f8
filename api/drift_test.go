package api_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/api"
)

// The drift line of ccm status and the dashboard says what was last
// found, what backs off and what is scanned; nothing when there is
// nothing to say.
func TestDriftSummary(t *testing.T) {
	at := time.Date(2026, 11, 23, 11, 2, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		d    *api.Drift
		want string
	}{
		{"none", nil, ""},
		{"nothing found yet", &api.Drift{Mode: "repair"}, ""},
		{"repaired", &api.Drift{Mode: "repair", Path: "/etc/a.conf", What: []string{"content", "mode 0666 -> 0644"}, Time: at, Fixed: true},
			"drift repaired: /etc/a.conf (content, mode 0666 -> 0644) at 2026-11-23T11:02:00Z"},
		{"watch mode", &api.Drift{Mode: "watch", Path: "/etc/a.conf", What: []string{"missing"}, Time: at},
			"drift found (not repaired): /etc/a.conf (missing) at 2026-11-23T11:02:00Z"},
		{"backoff and scan", &api.Drift{Mode: "repair", Path: "/etc/a.conf", What: []string{"content"}, Time: at, Fixed: true, Backoff: []string{"/etc/a.conf"}, Scanned: 2},
			"drift repaired: /etc/a.conf (content) at 2026-11-23T11:02:00Z; 1 path(s) drift again and again, repaired with backoff (something else writes them): /etc/a.conf; 2 directories scanned for want of inotify watches (raise fs.inotify.max_user_watches)"},
	} {
		assert.Equal(t, c.want, c.d.Summary(), c.name)
	}
}
