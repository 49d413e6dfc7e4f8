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
