package client

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// Record is one request to one node, with its reply so far (nil before
// the node picked it up).
type Record struct {
	Node    string      `json:"node"`
	Request api.Request `json:"request"`
	Reply   *api.Reply  `json:"reply,omitempty"`
}

// By is the caller of the request: the name of the key that signed it,
// once a node that requires signatures verified it, else the caller's
// own claim, marked "(unverified)".
func (r Record) By() string {
	if r.Reply != nil && r.Reply.Signed {
		return r.Reply.By
	}
	if r.Request.By == "" {
		return "(unverified)"
	}
	return r.Request.By + " (unverified)"
}

// Get returns the requests of call id, one per node, with their replies,
// sorted by node. It returns none for an unknown (or expired) id.
func (c *Client) Get(ctx context.Context, id string) ([]Record, error) {
	prefix := c.keys.AllActionsPrefix()
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		if strings.HasSuffix(string(kv.Key), "/"+id) {
			keys = append(keys, string(kv.Key))
		}
	}
	return c.records(ctx, keys, resp.Header.Revision)
}

// List returns the requests to node (every node when empty) that etcd
// still keeps, newest first, at most limit of them (all when 0).
func (c *Client) List(ctx context.Context, node string, limit int) ([]Record, error) {
	prefix := c.keys.AllActionsPrefix()
	if node != "" {
		prefix = c.keys.ActionsPrefix(node)
	}
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	// IDs sort by time: newest first, whatever the node.
	slices.SortFunc(keys, func(a, b string) int {
		return strings.Compare(b[strings.LastIndexByte(b, '/'):], a[strings.LastIndexByte(a, '/'):])
	})
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
	}
	return c.records(ctx, keys, resp.Header.Revision)
}

// records reads the requests at keys and their replies, at revision rev.
func (c *Client) records(ctx context.Context, keys []string, rev int64) ([]Record, error) {
	prefix := c.keys.AllActionsPrefix()
	var out []Record
	for chunk := range slices.Chunk(keys, api.MaxTxnOps/2) {
		var ops []clientv3.Op
		for _, k := range chunk {
			node, id, _ := strings.Cut(strings.TrimPrefix(k, prefix), "/")
			ops = append(ops, clientv3.OpGet(k, clientv3.WithRev(rev)), clientv3.OpGet(c.keys.ReplyKey(node, id), clientv3.WithRev(rev)))
		}
		resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read the requests: %w", err)
		}
		for i, k := range chunk {
			reqKvs := resp.Responses[2*i].GetResponseRange().Kvs
			if len(reqKvs) == 0 {
				continue
			}
			node, _, _ := strings.Cut(strings.TrimPrefix(k, prefix), "/")
			r := Record{Node: node}
			if err := json.Unmarshal(reqKvs[0].Value, &r.Request); err != nil {
				r.Request.Action = "(unreadable request)"
			}
			if kvs := resp.Responses[2*i+1].GetResponseRange().Kvs; len(kvs) > 0 {
				r.Reply = &api.Reply{}
				if json.Unmarshal(kvs[0].Value, r.Reply) != nil {
					r.Reply = &api.Reply{State: api.StateUnreadable}
				}
			}
			out = append(out, r)
		}
	}
	return out, nil
}
