package client

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// View is what a cluster API may want to show of the cluster, read-only,
// at one revision: the failure flag, the pause, the strategy, the
// promoted release, the quarantines and every node's records. It is
// decoded by package api's decoders, as ccm status decodes it; the
// states ccm status derives (running, behind, ...) are not in it.
type View struct {
	Revision int64
	// Failures are the failure records, oldest first: the flag is up
	// while there is one.
	Failures []api.Failure
	Pause    *api.Pause // nil: not paused
	Rollout  api.Rollout
	// Release is the promoted release (nil: agents read --config-dir).
	Release     *api.ReleasePointer
	Quarantines []api.Quarantine
	// Nodes is every node with a status, a presence or a problem record,
	// by name.
	Nodes map[string]NodeState
}

// NodeState is one node's records.
type NodeState struct {
	Status   *api.Status   // its last run; nil if it never ran
	Presence *api.Presence // nil: no agent alive
	Problem  *api.Problem  // why its alive agent makes no progress
	// Labels are the operators' labels (ccm node label), which calls by
	// label match.
	Labels map[string]string
}

// View reads the cluster's records at one revision. It needs read on the
// cluster's prefix (ccm rbac print --api or --viewer).
func (c *Client) View(ctx context.Context) (*View, error) {
	k := c.keys
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Txn(rctx).Then(
		clientv3.OpGet(k.FailuresRange(), clientv3.WithPrefix()),
		clientv3.OpGet(k.PausedKey()),
		clientv3.OpGet(k.RolloutKey()),
		clientv3.OpGet(k.ReleasePointerKey()),
		clientv3.OpGet(k.QuarantinePrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(k.LabelsPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(k.NodesPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", k.Prefix(), err)
	}
	r := func(i int) []*mvccpb.KeyValue { return resp.Responses[i].GetResponseRange().Kvs }
	v := &View{
		Revision: resp.Header.Revision,
		Failures: api.DecodeFailures(k, r(0)), Pause: api.DecodePause(r(1)), Rollout: api.DecodeRollout(r(2)),
		Quarantines: api.DecodeQuarantines(k, r(4)), Nodes: map[string]NodeState{},
	}
	if kvs := r(3); len(kvs) > 0 {
		if v.Release, err = api.DecodeReleasePointer(k.ReleasePointerKey(), kvs[0].Value); err != nil {
			return nil, err
		}
	}
	labels := api.DecodeLabels(k, r(5))
	var names []string
	for _, kv := range r(6) {
		name, rest, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), k.NodesPrefix()), "/")
		// A node's keys are contiguous: its prefix is common to them.
		if (rest == "status" || rest == "alive" || rest == "problem") && (len(names) == 0 || names[len(names)-1] != name) {
			names = append(names, name)
		}
	}
	for chunk := range slices.Chunk(names, api.MaxTxnOps/3) {
		var ops []clientv3.Op
		for _, n := range chunk {
			ops = append(ops, clientv3.OpGet(k.StatusKey(n), clientv3.WithRev(v.Revision)),
				clientv3.OpGet(k.AliveKey(n), clientv3.WithRev(v.Revision)), clientv3.OpGet(k.ProblemKey(n), clientv3.WithRev(v.Revision)))
		}
		tr, err := c.cli.Txn(rctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k.NodesPrefix(), err)
		}
		for i, n := range chunk {
			v.Nodes[n] = NodeState{Status: api.DecodeStatus(n, first(tr.Responses[3*i])), Presence: api.DecodePresence(n, first(tr.Responses[3*i+1])),
				Problem: api.DecodeProblem(first(tr.Responses[3*i+2])), Labels: labels[n]}
		}
	}
	return v, nil
}

// first is the first key of a range response, nil when none.
func first(r *etcdserverpb.ResponseOp) *mvccpb.KeyValue {
	if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}
