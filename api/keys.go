package api

import (
	"fmt"
	"strings"
	"time"
)

// Keys is the key layout of one cluster under its prefix: the one place
// that spells an etcd key of ccm.
type Keys struct{ prefix string }

// NewKeys returns the layout under prefix (DefaultPrefix when empty; a
// trailing slash is ignored).
func NewKeys(prefix string) Keys {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		p = DefaultPrefix
	}
	return Keys{prefix: p}
}

// Prefix is the prefix of every key of the cluster.
func (k Keys) Prefix() string { return k.prefix + "/" }

// ObjectsPrefix is the prefix of every object: ObjectsPrefix()+"<type>/<id>".
func (k Keys) ObjectsPrefix() string { return k.prefix + "/objects/" }

// ObjectKey is the key of one object.
func (k Keys) ObjectKey(typ, id string) string { return k.ObjectsPrefix() + typ + "/" + id }

// FailureKey is the key of a node's failure record. The failure flag is
// up while any node's record exists (see FailureOf).
func (k Keys) FailureKey(node string) string { return k.FailuresRange() + "/" + node }

// LegacyFailureKey is the one failure flag of the layout before per-node
// records: agents still obey it, and ccm resume still clears it, so that a
// cluster halts whichever agents raised the flag during an upgrade.
func (k Keys) LegacyFailureKey() string { return k.FailuresRange() }

// FailuresRange is the prefix (without a slash) that holds every failure
// record and the legacy flag; FailureOf tells them from anything else.
func (k Keys) FailuresRange() string { return k.prefix + "/failure" }

// FailureOf is the node whose failure record key is, "" for the legacy
// flag; ok is false for a key that is neither.
func (k Keys) FailureOf(key string) (node string, ok bool) {
	if key == k.LegacyFailureKey() {
		return "", true
	}
	return k.ownSegment(k.FailuresRange()+"/", key)
}

// ownSegment is the node that key names right after prefix, when key is
// prefix+"<node>" and nothing more: the name a node's role lets only that
// node (and operators) write.
func (k Keys) ownSegment(prefix, key string) (string, bool) {
	node, ok := strings.CutPrefix(key, prefix)
	if !ok || node == "" || strings.Contains(node, "/") {
		return "", false
	}
	return node, true
}

// LockPrefix is the prefix of the lock queue, whose keys are
// LockKey(node, lease).
func (k Keys) LockPrefix() string { return k.prefix + "/lock/" }

// LockKey is the key a node queues for the lock with, on its session's
// lease (hex): under the node's own prefix of the queue, which its role
// lets only it write.
func (k Keys) LockKey(node, lease string) string { return k.LockPrefix() + node + "/" + lease }

// LockOf is the node that queued a lock key, with the rule every agent
// and ccm status share: a key counts only if it is on a lease (etcd
// deletes a key when its lease ends, so a key read with a lease is on a
// live one) and is LockKey(node, lease). A key of the layout before
// per-node keys, LockPrefix()+"<lease>" on that very lease, still counts
// (legacy is set, and node is ""): an agent not yet upgraded holds the
// lock with it. Anything else under the prefix is ignored.
func (k Keys) LockOf(key string, lease int64) (node string, legacy, ok bool) {
	rest, found := strings.CutPrefix(key, k.LockPrefix())
	if !found || lease == 0 {
		return "", false, false
	}
	id := fmt.Sprintf("%x", lease)
	if rest == id {
		return "", true, true
	}
	node, tail, found := strings.Cut(rest, "/")
	if !found || node == "" || tail != id {
		return "", false, false
	}
	return node, false, true
}

// NodesPrefix is the prefix of every node's keys.
func (k Keys) NodesPrefix() string { return k.prefix + "/nodes/" }

// LabelsPrefix is the prefix of the labels operators give nodes
// (LabelsKey): outside NodesPrefix, so that a node may read its labels
// and never write them.
func (k Keys) LabelsPrefix() string { return k.prefix + "/labels/" }

// LabelsKey is the key of one node's labels, a JSON object of strings
// that ccm node label writes. Calls by label match these, never the
// labels a node claims for itself.
func (k Keys) LabelsKey(node string) string { return k.LabelsPrefix() + node }

// NodePrefix is the prefix of one node's keys.
func (k Keys) NodePrefix(node string) string { return k.NodesPrefix() + node + "/" }

// StatusKey is the key of a node's last run.
func (k Keys) StatusKey(node string) string { return k.NodePrefix(node) + "status" }

// AliveKey is the key of a node's presence.
func (k Keys) AliveKey(node string) string { return k.NodePrefix(node) + "alive" }

// ProblemKey is the key of what a node's alive agent cannot do.
func (k Keys) ProblemKey(node string) string { return k.NodePrefix(node) + "problem" }

// ActionsPrefix is the prefix of the requests addressed to one node:
// ActionsPrefix(node)+"<id>". Only callers write there; the node reads.
func (k Keys) ActionsPrefix(node string) string { return k.prefix + "/actions/" + node + "/" }

// AllActionsPrefix is the prefix of every node's requests.
func (k Keys) AllActionsPrefix() string { return k.prefix + "/actions/" }

// ActionKey is the key of one request to one node.
func (k Keys) ActionKey(node, id string) string { return k.ActionsPrefix(node) + id }

// CallsPrefix is the prefix of the call records: CallKey(id).
func (k Keys) CallsPrefix() string { return k.prefix + "/calls/" }

// CallKey is the key of the record of call id, which names the nodes it
// addresses, so that a caller finds a call's requests without a scan.
func (k Keys) CallKey(id string) string { return k.CallsPrefix() + id }

// RepliesPrefix is the prefix of one node's replies, among its own keys.
func (k Keys) RepliesPrefix(node string) string { return k.NodePrefix(node) + "replies/" }

// ReplyKey is the key of a node's reply to one request.
func (k Keys) ReplyKey(node, id string) string { return k.RepliesPrefix(node) + id }

// PausedKey is the key of the rollout pause.
func (k Keys) PausedKey() string { return k.prefix + "/paused" }

// RolloutKey is the key of the rollout strategy.
func (k Keys) RolloutKey() string { return k.prefix + "/rollout" }

// CanaryPrefix is the prefix of the canary records: CanaryKey(node).
func (k Keys) CanaryPrefix() string { return k.prefix + "/canary/" }

// CanaryKey is the key of the last change a node converged as its
// change's canary.
func (k Keys) CanaryKey(node string) string { return k.CanaryPrefix() + node }

// CanaryOf is the node whose canary record key is (ok false for any other
// key).
func (k Keys) CanaryOf(key string) (string, bool) { return k.ownSegment(k.CanaryPrefix(), key) }

// QuarantinePrefix holds every quarantine record, as
// QuarantineKey(node, type, id).
func (k Keys) QuarantinePrefix() string { return k.prefix + "/quarantine/" }

// NodeQuarantinePrefix holds the quarantine records one node wrote: the
// only part of QuarantinePrefix that node's role may write.
func (k Keys) NodeQuarantinePrefix(node string) string { return k.QuarantinePrefix() + node + "/" }

// QuarantineKey is the record of node that object typ/id is quarantined.
func (k Keys) QuarantineKey(node, typ, id string) string {
	return k.NodeQuarantinePrefix(node) + typ + "/" + id
}

// QuarantineOf splits a quarantine record's key into the node that wrote
// it and the object; ok is false for any other key.
func (k Keys) QuarantineOf(key string) (node, typ, id string, ok bool) {
	rest, found := strings.CutPrefix(key, k.QuarantinePrefix())
	if !found {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || !ValidName(parts[0]) || !ValidName(parts[1]) || !ValidName(parts[2]) {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// ReleasesPrefix holds every stored release: ReleaseKey(id) is its
// manifest, ReleaseChunkKey(id, file, chunk) its content.
func (k Keys) ReleasesPrefix() string { return k.prefix + "/releases/" }

// ReleaseKey is the manifest of release id; it is written last, so a
// release whose manifest exists is complete.
func (k Keys) ReleaseKey(id string) string { return k.ReleasesPrefix() + id }

// ReleaseChunkKey is chunk chunk of file file (its index in the manifest)
// of release id.
func (k Keys) ReleaseChunkKey(id string, file, chunk int) string {
	return fmt.Sprintf("%s%s/%06d/%06d", k.ReleasesPrefix(), id, file, chunk)
}

// ReleasePointerKey names the release agents run.
func (k Keys) ReleasePointerKey() string { return k.prefix + "/release" }

// HistoryPrefix holds the history of operators' changes: HistoryKey.
func (k Keys) HistoryPrefix() string { return k.prefix + "/history/" }

// HistoryKey is the key of one history record written at t: its time in
// nanoseconds since 1970, 20 digits, so that keys sort by time, then a
// suffix that keeps two records of one nanosecond apart.
func (k Keys) HistoryKey(t time.Time, suffix string) string {
	return fmt.Sprintf("%s%020d-%s", k.HistoryPrefix(), t.UnixNano(), suffix)
}
