package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is the key prefix of a cluster.
const DefaultPrefix = "/ccm"

// DefaultLockTTL is the lease TTL of the lock session.
const DefaultLockTTL = 30 * time.Second

// ErrLockLost is returned when a write under the lock finds that this node
// no longer holds it.
var ErrLockLost = errors.New("cluster lock lost")

// Failure is the value of the failure flag.
type Failure struct {
	Node          string    `json:"node"`
	Configuration string    `json:"configuration"`
	Error         string    `json:"error"`
	Revision      int64     `json:"revision"`
	Time          time.Time `json:"time"`
}

// Status is a node's last run, written under the lock.
type Status struct {
	Node string `json:"node"`
	// Result is how the last run ended: converged, failed, aborted or
	// halted.
	Result string `json:"result"`
	// Revision is the etcd revision the last run rendered.
	Revision int64 `json:"revision"`
	// Converged is the revision of the last run that converged; it is
	// kept while later runs are halted or fail.
	Converged      int64     `json:"converged_revision"`
	Configurations []Outcome `json:"configurations,omitempty"`
	Error          string    `json:"error,omitempty"`
	Time           time.Time `json:"time"`
	Duration       string    `json:"duration,omitempty"`
}

// Outcome is how one configuration ended in a run.
type Outcome struct {
	Config  string `json:"config"`
	Result  string `json:"result"`
	Created int    `json:"created,omitempty"`
	Updated int    `json:"updated,omitempty"`
	Removed int    `json:"removed,omitempty"`
	Error   string `json:"error,omitempty"`
}

// The results of a node's run.
const (
	ResultConverged = "converged"
	ResultFailed    = "failed"
	ResultAborted   = "aborted"
	ResultHalted    = "halted"
)

// Presence is the value of a node's alive key, on the agent's lease.
type Presence struct {
	Node   string            `json:"node"`
	Labels map[string]string `json:"labels,omitempty"`
	Lease  string            `json:"lease"`
	Since  time.Time         `json:"since"`
	// Pending is the revision of the oldest change that concerns the
	// node and that it had not converged when it saw it (0: none). The
	// node is behind while Pending is above its converged revision.
	Pending int64 `json:"pending_revision,omitempty"`
}

// Options configures a Cluster.
type Options struct {
	Prefix string // DefaultPrefix when empty
	Node   string
}

// Cluster reads and writes one cluster's shared state.
type Cluster struct {
	Keys
	client *clientv3.Client
	node   string
}

// New returns a Cluster for a node.
func New(client *clientv3.Client, opts Options) *Cluster {
	return &Cluster{Keys: NewKeys(opts.Prefix), client: client, node: opts.Node}
}

// Client returns the etcd client.
func (c *Cluster) Client() *clientv3.Client { return c.client }

// Failure returns the failure flag, or nil when it is clear.
func (c *Cluster) Failure(ctx context.Context) (*Failure, error) {
	f, _, err := c.FailureAt(ctx)
	return f, err
}

// FailureAt is Failure, with the cluster revision it was read at.
func (c *Cluster) FailureAt(ctx context.Context) (*Failure, int64, error) {
	resp, err := c.client.Get(ctx, c.FailureKey())
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", c.FailureKey(), err)
	}
	return decodeFailure(resp), resp.Header.Revision, nil
}

func decodeFailure(resp *clientv3.GetResponse) *Failure {
	if len(resp.Kvs) == 0 {
		return nil
	}
	f := &Failure{}
	if err := json.Unmarshal(resp.Kvs[0].Value, f); err != nil {
		// A flag someone set by hand still halts the rollout.
		f.Error = string(resp.Kvs[0].Value)
	}
	return f
}

// Resume clears the failure flag and returns what it held.
func (c *Cluster) Resume(ctx context.Context) (*Failure, error) {
	f, err := c.Failure(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.client.Delete(ctx, c.FailureKey()); err != nil {
		return nil, fmt.Errorf("delete %s: %w", c.FailureKey(), err)
	}
	return f, nil
}

// Node states, as ccm status shows them.
const (
	StateIdle    = "idle"
	StateWaiting = "waiting" // for the lock
	StateRunning = "running" // holds the lock
	StateHalted  = "halted"  // its last run was stopped by the flag
	StateFailed  = "failed"  // its last run failed
	StateDown    = "down"    // no agent alive
)

// NodeView is what ccm status shows of one node.
type NodeView struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Converged is the last revision the node converged.
	Converged int64 `json:"converged_revision"`
	// Behind is set while a change that concerns the node is not
	// converged there yet.
	Behind   bool      `json:"behind"`
	Status   *Status   `json:"status,omitempty"`
	Presence *Presence `json:"presence,omitempty"`
}

// View is the whole cluster as ccm status shows it.
type View struct {
	Failure *Failure `json:"failure,omitempty"`
	// Holder is the node holding the lock ("" when free).
	Holder string `json:"holder,omitempty"`
	// Waiting lists the nodes queued for the lock, in order.
	Waiting []string   `json:"waiting,omitempty"`
	Nodes   []NodeView `json:"nodes"` // sorted by name
}

// View reads the failure flag, the lock queue and every node, at one
// revision.
func (c *Cluster) View(ctx context.Context) (*View, error) {
	resp, err := c.client.Txn(ctx).Then(
		clientv3.OpGet(c.FailureKey()),
		clientv3.OpGet(c.NodesPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.LockPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.NodesPrefix(), err)
	}
	v := &View{Failure: decodeFailure((*clientv3.GetResponse)(resp.Responses[0].GetResponseRange()))}
	nodes := map[string]*NodeView{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		rest := strings.TrimPrefix(string(kv.Key), c.NodesPrefix())
		name, kind, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		n := nodes[name]
		if n == nil {
			n = &NodeView{Name: name}
			nodes[name] = n
		}
		switch kind {
		case "status":
			n.Status = &Status{}
			if json.Unmarshal(kv.Value, n.Status) != nil {
				n.Status = &Status{Node: name, Result: "unreadable"}
			}
		case "alive":
			n.Presence = &Presence{}
			if json.Unmarshal(kv.Value, n.Presence) != nil {
				n.Presence = &Presence{Node: name}
			}
		}
	}
	locked := map[string]string{}
	for i, kv := range resp.Responses[2].GetResponseRange().Kvs {
		name := string(kv.Value)
		if i == 0 {
			v.Holder, locked[name] = name, StateRunning
		} else {
			v.Waiting = append(v.Waiting, name)
			if locked[name] == "" {
				locked[name] = StateWaiting
			}
		}
	}
	for _, n := range nodes {
		n.describe(locked[n.Name])
		v.Nodes = append(v.Nodes, *n)
	}
	sort.Slice(v.Nodes, func(i, j int) bool { return v.Nodes[i].Name < v.Nodes[j].Name })
	return v, nil
}

// describe derives the node's state and whether it is behind. This is the
// one place that decides what a node's state is.
func (n *NodeView) describe(lock string) {
	if n.Status != nil {
		n.Converged = n.Status.Converged
	}
	if n.Presence != nil && n.Presence.Pending > n.Converged {
		n.Behind = true
	}
	switch {
	case n.Presence == nil && lock == "":
		n.State = StateDown
	case lock != "":
		n.State = lock
	case n.Status != nil && n.Status.Result == ResultHalted:
		n.State = StateHalted
	case n.Status != nil && n.Status.Result == ResultFailed:
		n.State = StateFailed
	default:
		n.State = StateIdle
	}
	if n.Status != nil && n.Status.Result == ResultHalted { // it skipped a change
		n.Behind = true
	}
}

// Status returns a node's last run, or nil if it never ran.
func (c *Cluster) Status(ctx context.Context, node string) (*Status, error) {
	return getJSON[Status](ctx, c.client, c.StatusKey(node))
}

// Presence returns a node's presence, or nil if its agent is not alive.
func (c *Cluster) Presence(ctx context.Context, node string) (*Presence, error) {
	return getJSON[Presence](ctx, c.client, c.AliveKey(node))
}

// getJSON reads key as a JSON T, or nil when it does not exist.
func getJSON[T any](ctx context.Context, cli *clientv3.Client, key string) (*T, error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	v := new(T)
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return v, nil
}
