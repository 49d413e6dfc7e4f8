package cluster

import (
	"fmt"
	"strings"
)

// Permission is one etcd role permission.
type Permission struct {
	Type   string // read, write or readwrite
	Key    string
	Prefix bool
}

// Role is the least-privilege etcd role of one node.
type Role struct {
	Name        string
	Permissions []Permission
}

// NodeRole returns the role a node's agent needs and nothing more: read the
// objects, take the lock, read and raise the failure flag, and write its own
// status and presence. It cannot write objects or another node's keys.
func NodeRole(prefix, node string) Role {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		p = DefaultPrefix
	}
	return Role{
		Name: "ccm-node-" + node,
		Permissions: []Permission{
			{Type: "read", Key: p + "/objects/", Prefix: true},
			{Type: "readwrite", Key: p + "/lock/", Prefix: true},
			{Type: "readwrite", Key: p + "/failure"},
			{Type: "readwrite", Key: p + "/nodes/" + node + "/", Prefix: true},
		},
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
		cmds = append(cmds, fmt.Sprintf("etcdctl role grant-permission%s %s %s %s", prefix, r.Name, p.Type, p.Key))
	}
	return append(cmds,
		fmt.Sprintf(`etcdctl user add %s --new-user-password="$%s"`, r.Name, passwordVar),
		fmt.Sprintf("etcdctl user grant-role %s %s", r.Name, r.Name),
	)
}
