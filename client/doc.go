// Package client is the cluster API's side of ccm: it calls node actions
// over etcd and streams the replies as they arrive.
//
// A call is addressed to nodes by name, by label, or to every node whose
// agent is alive. It writes one request per node, on one lease that keeps
// requests and replies for the retention period, then waits for each
// node's final reply. Nodes that never pick their request up are reported
// with typed errors, never waited for forever.
package client
