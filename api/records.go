package api

import (
	"fmt"
	"time"
)

// DefaultPrefix is the key prefix of a cluster.
const DefaultPrefix = "/ccm"

// Failure is a failure record, <prefix>/failure/<node>: the node's run
// that failed. The failure flag is up while any record exists.
type Failure struct {
	// Node is the node whose key holds the record, whatever the value
	// says: a node's role writes only its own record, so a record can
	// never blame another node. For the legacy flag, it is what the
	// value says, and Legacy is set.
	Node          string    `json:"node"`
	Configuration string    `json:"configuration"`
	Error         string    `json:"error"`
	Revision      int64     `json:"revision"`
	Time          time.Time `json:"time"`
	// Legacy is set for the one flag of the layout before per-node
	// records (<prefix>/failure), whose writer cannot be told.
	Legacy bool `json:"legacy,omitempty"`
}

// By says who raised the record, as every message names it: "node NAME",
// or for the legacy flag what its value claims, marked as unproven.
func (f Failure) By() string {
	if f.Legacy {
		return fmt.Sprintf("the legacy flag (it says node %s; any agent before per-node records could write it)", f.Node)
	}
	return "node " + f.Node
}

// Status is a node's last run, written under the lock.
type Status struct {
	Node string `json:"node"`
	// Result is how the last run ended: converged, failed, aborted or
	// halted.
	Result string `json:"result"`
	// Revision is the etcd revision the last run rendered.
	Revision int64 `json:"revision"`
	// Converged is the revision of the last run that converged; it is
	// kept while later runs are halted or fail.
	Converged      int64     `json:"converged_revision"`
	Configurations []Outcome `json:"configurations,omitempty"`
	Error          string    `json:"error,omitempty"`
	Time           time.Time `json:"time"`
	Duration       string    `json:"duration,omitempty"`
	// Quarantined lists the objects ("type/id") the run held back: found
	// bad by this node or another, at their current revision.
	Quarantined []string `json:"quarantined,omitempty"`
	// Release is the configuration release the run used ("" for the
	// node's --config-dir).
	Release string `json:"release,omitempty"`
}

// Outcome is how one configuration ended in a run.
type Outcome struct {
	Config  string `json:"config"`
	Result  string `json:"result"`
	Created int    `json:"created,omitempty"`
	Updated int    `json:"updated,omitempty"`
	Removed int    `json:"removed,omitempty"`
	Error   string `json:"error,omitempty"`
}

// The results of a node's run.
const (
	ResultConverged = "converged"
	ResultFailed    = "failed"
	ResultAborted   = "aborted"
	ResultHalted    = "halted"
)

// Presence is the value of a node's alive key, on the agent's lease.
type Presence struct {
	Node   string            `json:"node"`
	Labels map[string]string `json:"labels,omitempty"`
	Lease  string            `json:"lease"`
	Since  time.Time         `json:"since"`
	// Host is the hostname of the machine the agent runs on, so that a
	// one-shot command elsewhere can tell it is not that machine.
	Host string `json:"host,omitempty"`
	// Pending is the revision of the oldest change that concerns the
	// node and that it had not converged when it saw it (0: none). The
	// node is behind while Pending is above its converged revision.
	Pending int64 `json:"pending_revision,omitempty"`
	// ActionKey is the node's public key (base64, X25519) that callers
	// seal secret action parameters to.
	ActionKey string `json:"action_key,omitempty"`
	// Instance identifies the agent's state directory, which one agent
	// at a time may use: a presence of the same instance on another
	// lease is this agent's own previous session, which it takes over.
	Instance string `json:"instance,omitempty"`
	// Release is the configuration release the agent has loaded ("" for
	// its --config-dir).
	Release string `json:"release,omitempty"`
	// ReloadError is why the agent's last load of a configuration (a
	// promoted release, or --config-dir on SIGHUP) failed; empty once
	// a load succeeds. The agent keeps running what it had loaded.
	ReloadError string `json:"reload_error,omitempty"`
	// ReleaseStoredError is why the copy in etcd of the release the
	// agent runs cannot be used (changed, deleted, no longer signed):
	// the agent runs its verified staged copy, and ccm release push of
	// the same directory repairs the stored one. Empty when it is whole.
	ReleaseStoredError string `json:"release_stored_error,omitempty"`
	// Drift is what the drift watcher last found (nil: --drift off, or
	// nothing yet).
	Drift *Drift `json:"drift,omitempty"`
}

// Problem is why an alive agent cannot make progress, written to its
// node's problem key once etcd answers, so that ccm status can say why a
// node is down or not converging while its agent runs. The agent deletes
// it once it makes progress again.
type Problem struct {
	Error string    `json:"error"`
	Since time.Time `json:"since"`
	Host  string    `json:"host,omitempty"`
}

// MaxTxnOps is etcd's default --max-txn-ops: the most operations one
// transaction may hold. Every batch of ccm's is cut to it.
const MaxTxnOps = 128

// Pause is the value of <prefix>/paused: while it exists, agents apply
// nothing and keep collecting changes. It implies no failure.
type Pause struct {
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

// Rollout is the rollout strategy, <prefix>/rollout. Absent, it is the
// serial rollout: one node at a time, no canary.
type Rollout struct {
	// Batch is how many nodes converge at once (lock slots); at least 1.
	Batch int `json:"batch"`
	// Canary makes the first node to converge a change do so alone; the
	// others start once it reported converged for it.
	Canary bool `json:"canary,omitempty"`
}

// Serial is the default strategy.
var Serial = Rollout{Batch: 1}

// Slots is how many nodes may hold the lock at once.
func (r Rollout) Slots() int { return max(r.Batch, 1) }

// String describes the strategy for ccm status.
func (r Rollout) String() string {
	s := "serial (one node at a time)"
	if r.Slots() > 1 {
		s = fmt.Sprintf("batches of %d nodes", r.Slots())
	}
	if r.Canary {
		s += ", each change first on one canary node"
	}
	return s
}

// ReleasePointer is <prefix>/release: the configuration release every
// agent runs. With no pointer, agents read their --config-dir.
type ReleasePointer struct {
	// ID is the full id of the promoted release.
	ID string `json:"id"`
	// History lists the releases promoted before it, newest first
	// (at most MaxReleaseHistory): ccm release rollback promotes the
	// first and drops it.
	History []string  `json:"history,omitempty"`
	By      string    `json:"by"`
	Time    time.Time `json:"time"`
	// Reason is why it was promoted ("rollback" for ccm release
	// rollback).
	Reason string `json:"reason,omitempty"`
}

// MaxReleaseHistory is how many earlier releases a ReleasePointer keeps.
const MaxReleaseHistory = 20

// Canary is a canary record, <prefix>/canary/<node>: the last change
// the node converged as its change's canary, written with its status.
type Canary struct {
	// Node is the node whose key holds the record (a value's own claim
	// is ignored).
	Node     string `json:"node"`
	Revision int64  `json:"revision"`
}

// Quarantine is a quarantine record, <prefix>/quarantine/<node>/<type>/<id>:
// node found that the object, at Revision, fails on its own (its render,
// its owner, its schema or its check) while the rest of the configuration
// converges. Every node skips the object at that revision without trying
// it; a new revision of the object lifts the quarantine.
type Quarantine struct {
	// Node, Type and ID come from the key, whatever the value says: a
	// node's role writes only its own records.
	Node          string    `json:"node"`
	Type          string    `json:"type"`
	ID            string    `json:"id"`
	Revision      int64     `json:"revision"`
	Configuration string    `json:"configuration"`
	Error         string    `json:"error"`
	Time          time.Time `json:"time"`
}

// Holds reports whether the record still holds back the object when the
// object is at revision rev: only at the revision that failed.
func (q Quarantine) Holds(rev int64) bool { return q.Revision == rev }

// Object is "type/id", as the CLI names an object.
func (q Quarantine) Object() string { return q.Type + "/" + q.ID }
