// Package rollout is a node's turn in the cluster's rollout: one run under
// the cluster lock. The agent and ccm apply --once both go through Runner,
// so that the flag check, the run, the status and the failure flag are
// decided in one place.
//
// A run, once the lock is held:
//
//  1. reads the failure flag; if it is set, records the node as halted
//     and stops;
//  2. takes a snapshot of the objects at least as new as the flag read;
//  3. applies the configurations (stopping between configurations if the
//     lock is lost);
//  4. writes the node's status and, after a failure, raises the flag,
//     both fenced by lock ownership.
//
// The status keeps the last converged revision across halted and failed
// runs, so that ccm status can tell which nodes are behind.
package rollout
