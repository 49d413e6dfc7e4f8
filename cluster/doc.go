// Package cluster is the state that nodes share in etcd to roll out one at a
// time: the lock, the failure flag, and each node's presence and status.
//
// Keys, under the prefix (default /ccm):
//
//	lock/<lease>         concurrency mutex keys (mutex prefix "<prefix>/lock")
//	failure              JSON Failure; set halts every node
//	nodes/<node>/status  JSON Status of the node's last run
//	nodes/<node>/alive   JSON Presence, attached to the node's lease
//
// Guarantees: every write a node makes while holding the lock (status,
// failure flag) is a transaction guarded by the mutex's ownership compare,
// so a node whose lease expired can never overwrite what the next holder
// wrote; such a write fails with ErrLockLost. A lease alone does not give
// mutual exclusion; the revision compare does.
package cluster
