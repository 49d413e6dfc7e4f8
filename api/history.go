package api

import "time"

// History is one record of <prefix>/history/ (HistoryKey): a change an
// operator made to the cluster, and who made it. Records are only ever
// added (the key must not exist) and deleted once older than the
// retention.
type History struct {
	Time time.Time `json:"time"`
	// Identity is the etcd identity that made the change: the etcd user,
	// or the CN of the client certificate when no user was given; empty
	// when etcd has no auth.
	Identity string `json:"identity,omitempty"`
	// Host is the OS user and host the command ran as (user@host): on a
	// shared jump host, not who made it.
	Host string `json:"host,omitempty"`
	// Action is the change, as its command names it: release promote,
	// release rollback, pause, unpause, resume, lock break, quarantine
	// clear, node label, node retire.
	Action string `json:"action"`
	// Detail is what it changed, in words.
	Detail string `json:"detail,omitempty"`
}

// Who is the identity a record names: the etcd identity, else the OS
// user and host.
func (h History) Who() string {
	if h.Identity != "" {
		return h.Identity
	}
	return h.Host
}
