package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// Labels returns the labels operators gave each node (ccm node label),
// by node.
func (c *Cluster) Labels(ctx context.Context) (map[string]map[string]string, error) {
	resp, err := c.client.Get(ctx, c.LabelsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.LabelsPrefix(), err)
	}
	return api.DecodeLabels(c.Keys, resp.Kvs), nil
}

// SetLabels changes a node's labels: set adds or replaces, remove deletes
// keys. It returns the labels that result; a node left with none has no
// labels key. The change is one transaction against the labels read.
func (c *Cluster) SetLabels(ctx context.Context, node string, set map[string]string, remove []string) (map[string]string, error) {
	key := c.LabelsKey(node)
	for {
		resp, err := c.client.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		labels, rev := map[string]string{}, int64(0)
		if len(resp.Kvs) > 0 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &labels); err != nil {
				return nil, fmt.Errorf("%s: not a JSON object of strings: %w", key, err)
			}
			rev = resp.Kvs[0].ModRevision
		}
		maps.Copy(labels, set)
		for _, k := range remove {
			delete(labels, k)
		}
		op := clientv3.OpDelete(key)
		if len(labels) > 0 {
			raw, _ := json.Marshal(labels)
			op = clientv3.OpPut(key, string(raw))
		}
		txn, err := c.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(op).Commit()
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", key, err)
		}
		if txn.Succeeded {
			return labels, nil
		}
	}
}
