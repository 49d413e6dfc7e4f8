package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// Quarantines returns every quarantine record, by object then node.
func (c *Cluster) Quarantines(ctx context.Context) ([]api.Quarantine, error) {
	resp, err := c.client.Get(ctx, c.QuarantinePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.QuarantinePrefix(), err)
	}
	return api.DecodeQuarantines(c.Keys, resp.Kvs), nil
}

// ClearQuarantine deletes the records of the objects named "type/id" (all
// when none is named), whichever node wrote them, so that the next run
// tries the objects again at their revision. It returns the records it
// deleted. It needs an operator's role.
func (c *Cluster) ClearQuarantine(ctx context.Context, objects []string) ([]api.Quarantine, error) {
	all, err := c.Quarantines(ctx)
	if err != nil {
		return nil, err
	}
	var cleared []api.Quarantine
	var ops []clientv3.Op
	for _, q := range all {
		if len(objects) > 0 && !slices.Contains(objects, q.Object()) {
			continue
		}
		cleared = append(cleared, q)
		ops = append(ops, clientv3.OpDelete(c.QuarantineKey(q.Node, q.Type, q.ID)))
	}
	for chunk := range slices.Chunk(ops, api.MaxTxnOps) {
		if _, err := c.client.Txn(ctx).Then(chunk...).Commit(); err != nil {
			return nil, fmt.Errorf("delete %s: %w", c.QuarantinePrefix(), err)
		}
	}
	return cleared, nil
}

// Quarantine writes this node's quarantine records add and deletes its
// records of the objects in lift ("type/id"), fenced by the lock: a node
// that lost the lock records nothing.
func (l *Lock) Quarantine(ctx context.Context, add []api.Quarantine, lift []string) error {
	c := l.s.c
	var ops []clientv3.Op
	for _, q := range add {
		q.Node = c.node
		raw, err := json.Marshal(q)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(c.QuarantineKey(c.node, q.Type, q.ID), string(raw)))
	}
	for _, o := range lift {
		typ, id, _ := strings.Cut(o, "/")
		ops = append(ops, clientv3.OpDelete(c.QuarantineKey(c.node, typ, id)))
	}
	for chunk := range slices.Chunk(ops, api.MaxTxnOps) {
		resp, err := c.client.Txn(ctx).If(l.isOwner()).Then(chunk...).Commit()
		if err != nil {
			return fmt.Errorf("write %s: %w", c.NodeQuarantinePrefix(c.node), err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("write %s: %w", c.NodeQuarantinePrefix(c.node), ErrLockLost)
		}
	}
	return nil
}
