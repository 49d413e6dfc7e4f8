package api

import (
	"fmt"
	"strings"
	"time"
)

// Drift is what a node's drift watcher last found: announced in its
// presence for ccm status and the dashboard.
type Drift struct {
	// Mode is the agent's --drift: watch or repair.
	Mode string `json:"mode"`
	// Repairs counts the drifted paths found since the agent started.
	Repairs int `json:"repairs,omitempty"`
	// Path, Config, What and Time describe the last one: the real path,
	// its configuration, what differed (content, missing, mode, owner;
	// never the content) and when. Fixed is false when it was only
	// reported (watch mode, a halted node, a failed repair).
	Path   string    `json:"path,omitempty"`
	Config string    `json:"config,omitempty"`
	What   []string  `json:"what,omitempty"`
	Time   time.Time `json:"time,omitzero"`
	Fixed  bool      `json:"fixed,omitempty"`
	// Backoff lists the paths repaired too often, now repaired with
	// backoff: something else writes them.
	Backoff []string `json:"backoff,omitempty"`
	// Scanned is how many directories are scanned for want of an inotify
	// watch (fs.inotify.max_user_watches).
	Scanned int `json:"scanned,omitempty"`
}

// Summary is the one line ccm status and the dashboard show of d ("" when
// there is nothing to say): the last drift, and the paths in backoff.
func (d *Drift) Summary() string {
	if d == nil || (d.Path == "" && len(d.Backoff) == 0 && d.Scanned == 0) {
		return ""
	}
	var parts []string
	if d.Path != "" {
		verb := "repaired"
		if !d.Fixed {
			verb = "found (not repaired)"
		}
		parts = append(parts, fmt.Sprintf("drift %s: %s (%s) at %s", verb, d.Path, strings.Join(d.What, ", "), d.Time.Format(time.RFC3339)))
	}
	if n := len(d.Backoff); n > 0 {
		parts = append(parts, fmt.Sprintf("%d path(s) drift again and again, repaired with backoff (something else writes them): %s", n, strings.Join(d.Backoff, ", ")))
	}
	if d.Scanned > 0 {
		parts = append(parts, fmt.Sprintf("%d directories scanned for want of inotify watches (raise fs.inotify.max_user_watches)", d.Scanned))
	}
	return strings.Join(parts, "; ")
}
