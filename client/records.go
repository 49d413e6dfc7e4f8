package client

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

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
// sorted by node. It returns none for an unknown (or expired) id. It reads
// the call's record, and the requests it names; only a call without one
// (sent by a role that may not write call records) costs a scan of every
// request.
func (c *Client) Get(ctx context.Context, id string) ([]Record, error) {
	keys, rev, err := c.callKeys(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.records(ctx, keys, rev)
}

// callKeys returns the request keys of call id, and the revision they were
// read at.
func (c *Client) callKeys(ctx context.Context, id string) ([]string, int64, error) {
	if err := api.CheckName("call id", id); err != nil {
		return nil, 0, err
	}
	resp, err := c.cli.Get(ctx, c.keys.CallKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", c.keys.CallKey(id), err)
	}
	var keys []string
	if len(resp.Kvs) > 0 {
		var rec api.CallRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", c.keys.CallKey(id), err)
		}
		for _, n := range slices.Sorted(slices.Values(rec.Nodes)) {
			keys = append(keys, c.keys.ActionKey(n, id))
		}
		return keys, resp.Header.Revision, nil
	}
	prefix := c.keys.AllActionsPrefix()
	resp, err = c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", prefix, err)
	}
	for _, kv := range resp.Kvs {
		if strings.HasSuffix(string(kv.Key), "/"+id) {
			keys = append(keys, string(kv.Key))
		}
	}
	return keys, resp.Header.Revision, nil
}

// Resume follows call id again, from any process: its handle yields each
// node's end once, as Start's does, for the nodes that have not answered
// yet as well as those that have. replyKey opens the replies sealed to the
// call's key (nil: they stay sealed). A request no node claimed within
// pickup (DefaultPickupTimeout when 0) is withdrawn, as in the original
// call. Resume finds the call by its record, without a scan.
func (c *Client) Resume(ctx context.Context, id string, replyKey *api.Key, pickup time.Duration) (*Handle, error) {
	keys, _, err := c.callKeys(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("call %s: %w", id, ErrUnknownCall)
	}
	nodes := make([]string, 0, len(keys))
	for _, k := range keys {
		node, _, _ := strings.Cut(strings.TrimPrefix(k, c.keys.AllActionsPrefix()), "/")
		nodes = append(nodes, node)
	}
	ctx, cancel := context.WithCancel(ctx)
	// The watches first, then the read: a reply written in between is
	// seen by both, never by neither.
	waiters, err := c.watch(ctx, id, nodes)
	if err != nil {
		cancel()
		return nil, err
	}
	rev, err := c.cli.Get(ctx, c.keys.CallKey(id), clientv3.WithCountOnly())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read %s: %w", c.keys.CallKey(id), err)
	}
	records, err := c.records(ctx, keys, rev.Header.Revision)
	if err != nil {
		cancel()
		return nil, err
	}
	byNode := map[string]Record{}
	for _, r := range records {
		byNode[r.Node] = r
	}
	h := &Handle{ID: id, Sent: &Sent{ID: id, Nodes: nodes, ReplyKey: replyKey}, c: c, ctx: ctx, cancel: cancel,
		call: Call{Timing: Timing{PickupTimeout: pickup}}, resumed: []*waiter{}}
	for _, w := range waiters {
		r, found := byNode[w.node]
		switch {
		case found && r.Reply != nil && api.Final(r.Reply.State):
			w.cancel()
			h.done = append(h.done, h.end(result{node: w.node, reply: *r.Reply}))
		case !found:
			w.cancel()
			h.done = append(h.done, h.fail(w.node, ErrGone))
		default:
			h.resumed = append(h.resumed, w)
		}
	}
	return h, nil
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
