// Package agent is the long-running ccm service on one node: it wires the
// watcher, the debouncer, the subscription index, the cluster lock and the applier
// into the flow docs/ARCHITECTURE.md draws ("A change to objects").
//
//	watch -> mirror + thin events -> debounce -> subscriptions select
//	configurations -> lock -> failure flag? -> sync mirror -> apply in
//	dependency order -> status (+ flag on failure) -> unlock
//
// Guarantees:
//   - Every run holds the cluster lock; status and flag writes are fenced
//     by lock ownership.
//   - Events that arrive during a run are collected for the next one.
//   - While the failure flag is set the agent does not apply: it reports
//     itself halted once, keeps collecting events, and converges
//     everything when the flag is cleared.
//   - If the session is lost mid-run, the run stops before the next
//     configuration, is recorded as aborted, and everything converges again
//     on a new session.
//   - etcd being unreachable never stops the agent: every loop follows
//     etcd with package follow (one backoff policy), the session has one
//     owner (sessions), and the agent reports not ready. An outage longer
//     than the TTL leaves its previous session in etcd; the agent takes it
//     over by its instance ID. Not ready for StuckAfter fails Healthy (and
//     the watchdog); after 10 s it writes why to its problem record.
//   - What happens after a run is rollout.Result.Next, read the same way
//     by the loop, ccm.converge and ccm apply --once.
//   - Run returns nil after its context is cancelled, once the current
//     configuration has finished and the lock is released.
package agent
