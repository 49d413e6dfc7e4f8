package cluster

import (
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// Permission is one etcd role permission: on Key, every key under it
// (Prefix), or the range [Key, End).
type Permission struct {
	Type   string // read, write or readwrite
	Key    string
	Prefix bool
	End    string
}

// Role is the least-privilege etcd role of one node.
type Role struct {
	Name        string
	Permissions []Permission
}

// NodeRole returns the role a node's agent needs and nothing more: read
// the objects and the actions addressed to it, read the lock queue, the
// failure records, the canary records, the pause and the strategy, and
// write only its own records: its lock keys, its failure record, its
// canary record, its quarantine records, and its status, presence,
// problem and replies. It reads the releases and the release pointer,
// and writes neither. So it
// cannot write objects or requests, and cannot queue, release, fail,
// resume or approve a canary for another node.
func NodeRole(prefix, node string) Role {
	k := api.NewKeys(prefix)
	return Role{
		Name: "ccm-node-" + node,
		Permissions: []Permission{
			{Type: "read", Key: k.ObjectsPrefix(), Prefix: true},
			{Type: "read", Key: k.ActionsPrefix(node), Prefix: true},
			{Type: "read", Key: k.LockPrefix(), Prefix: true},
			{Type: "readwrite", Key: k.LockKey(node, ""), Prefix: true},
			{Type: "read", Key: k.FailuresRange(), Prefix: true},
			{Type: "readwrite", Key: k.FailureKey(node)},
			{Type: "read", Key: k.PausedKey()},
			{Type: "read", Key: k.RolloutKey()},
			{Type: "read", Key: k.CanaryPrefix(), Prefix: true},
			{Type: "readwrite", Key: k.CanaryKey(node)},
			{Type: "readwrite", Key: k.NodePrefix(node), Prefix: true},
			{Type: "read", Key: k.LabelsKey(node)},
			{Type: "read", Key: k.QuarantinePrefix(), Prefix: true},
			{Type: "readwrite", Key: k.NodeQuarantinePrefix(node), Prefix: true},
			{Type: "read", Key: k.ReleasesPrefix(), Prefix: true},
			{Type: "read", Key: k.ReleasePointerKey()},
		},
	}
}

// ReleaseRole returns the role of whoever pushes configuration releases
// (a CI job): store releases under <prefix>/releases/, and nothing else.
// It cannot promote one: moving <prefix>/release is an operator's.
// A release is code that runs as root on every node: sign it too, and
// give the agents --release-keys.
func ReleaseRole(prefix, name string) Role {
	k := api.NewKeys(prefix)
	return Role{
		Name:        "ccm-release-" + name,
		Permissions: []Permission{{Type: "readwrite", Key: k.ReleasesPrefix(), Prefix: true}},
	}
}

// CallerRole returns the role of a caller of actions, such as the cluster
// API: write requests to any node (and withdraw them) with their call
// records, read the nodes' replies and presence. It cannot read or write objects, take the lock or
// touch the failure flag.
func CallerRole(prefix, name string) Role {
	k := api.NewKeys(prefix)
	return Role{
		Name: "ccm-caller-" + name,
		Permissions: []Permission{
			{Type: "readwrite", Key: k.AllActionsPrefix(), Prefix: true},
			{Type: "readwrite", Key: k.CallsPrefix(), Prefix: true},
			{Type: "read", Key: k.NodesPrefix(), Prefix: true},
			{Type: "read", Key: k.LabelsPrefix(), Prefix: true},
		},
	}
}

// APIRole returns the role of a cluster API: write and delete objects,
// call actions on any node (write and withdraw requests), and read what
// ccm status reads. It cannot raise or clear the flag, pause, take the
// lock or write a node's records. It reads the releases too: ccm object
// put checks objects against the promoted release's schemas, which only
// its stored copy holds (a release holds no secrets: push refuses them).
func APIRole(prefix, name string) Role {
	k := api.NewKeys(prefix)
	return Role{
		Name: "ccm-api-" + name,
		Permissions: append([]Permission{
			{Type: "readwrite", Key: k.ObjectsPrefix(), Prefix: true},
			{Type: "readwrite", Key: k.AllActionsPrefix(), Prefix: true},
			{Type: "readwrite", Key: k.CallsPrefix(), Prefix: true},
			{Type: "read", Key: k.ReleasesPrefix(), Prefix: true},
		}, statusRead(k)...),
	}
}

// OperatorRole returns the role of an operator, whose commands manage
// the whole cluster: objects, actions, the flag (ccm resume), the pause,
// the strategy, the canary, the lock and every node's records. It is
// read-write on the cluster's prefix, and nothing outside it.
func OperatorRole(prefix, name string) Role {
	return Role{
		Name:        "ccm-operator-" + name,
		Permissions: []Permission{{Type: "readwrite", Key: api.NewKeys(prefix).Prefix(), Prefix: true}},
	}
}

// ViewerRole returns the read-only role of ccm status and the dashboard:
// it does not read the releases, which neither needs.
func ViewerRole(prefix, name string) Role {
	return Role{Name: "ccm-viewer-" + name, Permissions: statusRead(api.NewKeys(prefix))}
}

// statusRead is what ccm status and the dashboard read: the flag, the
// pause, the strategy, the canary, the lock queue, every node's records,
// the newest object write and the recent actions, under one watch of the
// cluster's prefix but its releases (StatusRanges). So it is that,
// read-only: object data and action replies included.
func statusRead(k api.Keys) []Permission {
	var out []Permission
	for _, r := range StatusRanges(k) {
		out = append(out, Permission{Type: "read", Key: r[0], End: r[1]})
	}
	return out
}

// StatusRanges are the key ranges [from, to) that ccm status and the
// dashboard read and follow: the cluster's prefix, but for its releases.
func StatusRanges(k api.Keys) [][2]string {
	return [][2]string{
		{k.Prefix(), k.ReleasesPrefix()},
		{clientv3.GetPrefixRangeEnd(k.ReleasesPrefix()), clientv3.GetPrefixRangeEnd(k.Prefix())},
	}
}

// EtcdctlCommands returns the etcdctl commands that create the role and a
// user of the same name with it. The password is read from the shell
// variable passwordVar.
func (r Role) EtcdctlCommands(passwordVar string) []string {
	cmds := []string{"etcdctl role add " + r.Name}
	for _, p := range r.Permissions {
		prefix := ""
		if p.Prefix {
			prefix = " --prefix=true"
		}
		key := p.Key
		if p.End != "" {
			key += " " + p.End
		}
		cmds = append(cmds, fmt.Sprintf("etcdctl role grant-permission%s %s %s %s", prefix, r.Name, p.Type, key))
	}
	return append(cmds,
		fmt.Sprintf(`etcdctl user add %s --new-user-password="$%s"`, r.Name, passwordVar),
		fmt.Sprintf("etcdctl user grant-role %s %s", r.Name, r.Name),
	)
}
