package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNodeAlive is returned by Retire while an agent announces the node.
var ErrNodeAlive = errors.New("an agent is alive for the node")

// Retired is one record Retire deleted: its key and the value it held.
type Retired struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Retire forgets a node whose agent is gone for good: it deletes the
// node's status, presence, problem, failure and canary records, every
// quarantine record it wrote and its labels, in one transaction that
// holds only while no agent announces the node (no presence on a
// lease). It returns what it deleted, in that order; ErrNodeAlive when an
// agent is alive. The node's replies to actions stay: they are their
// callers' records, and scanNodes does not list a node by them.
func (c *Cluster) Retire(ctx context.Context, node string) ([]Retired, error) {
	single := []string{c.StatusKey(node), c.AliveKey(node), c.ProblemKey(node), c.FailureKey(node), c.CanaryKey(node)}
	var ops []clientv3.Op
	for _, key := range single {
		ops = append(ops, clientv3.OpDelete(key, clientv3.WithPrevKV()))
	}
	ops = append(ops,
		clientv3.OpDelete(c.NodeQuarantinePrefix(node), clientv3.WithPrefix(), clientv3.WithPrevKV()),
		clientv3.OpDelete(c.LabelsKey(node), clientv3.WithPrevKV()))
	alive := c.AliveKey(node)
	// A missing key compares as lease 0, and so does a presence written
	// by hand: only an agent's presence is on a lease.
	resp, err := c.client.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(alive), "=", 0)).Then(ops...).
		Else(clientv3.OpGet(alive)).Commit()
	if err != nil {
		return nil, fmt.Errorf("retire node %s: %w", node, deniedHint(err, "an operator's role (ccm rbac print --operator NAME)"))
	}
	if !resp.Succeeded {
		lease := int64(0)
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			lease = kvs[0].Lease
		}
		return nil, fmt.Errorf("retire node %s: %w (presence %s on lease %x): stop its agent first, or wait until its lease expires", node, ErrNodeAlive, alive, lease)
	}
	var out []Retired
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseDeleteRange().PrevKvs {
			out = append(out, Retired{Key: string(kv.Key), Value: string(kv.Value)})
		}
	}
	return out, nil
}
