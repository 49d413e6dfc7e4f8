package api

import "time"

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
