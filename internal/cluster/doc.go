// Package cluster is the state that nodes share in etcd to roll out one at a
// time (or in batches behind a canary): the lock queue, the failure
// records, the pause and the strategy, and each node's presence, status and
// labels.
//
// Every key is spelled once, in Keys (docs/REFERENCE.md, "etcd keys", is
// the layout users read), and whose record a key is, is decided once:
// Keys.LockOf, FailureOf and CanaryOf.
//
// The lock is a queue of one key per session, lock/<node>/<lease>, on that
// session's lease; the oldest batch keys hold a slot. Joining it and
// reading what gates a run (the strategy, the flags, the pause, the
// canaries) is one transaction.
//
// Guarantees: every write a node makes while holding the lock (status,
// failure record, canary record) is a transaction guarded by the lock key's
// create revision, and every rename or command of a run is fenced by it
// (Lock.Fence), so a node whose lease expired can never overwrite what the
// next holder wrote; such a write fails with ErrLockLost. A lease alone
// does not give mutual exclusion; the revision compare does.
package cluster
