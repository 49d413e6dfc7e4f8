package cluster

import "strings"

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

// FailureKey is the key of the failure flag.
func (k Keys) FailureKey() string { return k.prefix + "/failure" }

// LockPrefix is the prefix of the lock queue: LockPrefix()+"<lease>".
func (k Keys) LockPrefix() string { return k.prefix + "/lock/" }

// NodesPrefix is the prefix of every node's keys.
func (k Keys) NodesPrefix() string { return k.prefix + "/nodes/" }

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

// RepliesPrefix is the prefix of one node's replies, among its own keys.
func (k Keys) RepliesPrefix(node string) string { return k.NodePrefix(node) + "replies/" }

// ReplyKey is the key of a node's reply to one request.
func (k Keys) ReplyKey(node, id string) string { return k.RepliesPrefix(node) + id }

// PausedKey is the key of the rollout pause.
func (k Keys) PausedKey() string { return k.prefix + "/paused" }

// RolloutKey is the key of the rollout strategy.
func (k Keys) RolloutKey() string { return k.prefix + "/rollout" }

// CanaryKey is the key of the last change a canary converged.
func (k Keys) CanaryKey() string { return k.prefix + "/canary" }
