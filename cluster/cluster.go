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

	"github.com/ccm-dev/ccm/applier"
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

// Status is a node's last run.
type Status struct {
	Node     string            `json:"node"`
	Revision int64             `json:"revision"`
	Result   string            `json:"result"` // converged, failed, aborted, halted
	Outcomes []applier.Outcome `json:"configurations,omitempty"`
	Error    string            `json:"error,omitempty"`
	Time     time.Time         `json:"time"`
	Duration string            `json:"duration,omitempty"`
}

// The results of a node's run.
const (
	ResultConverged = "converged"
	ResultFailed    = "failed"
	ResultAborted   = "aborted"
	ResultHalted    = "halted"
)

// Presence is the value of a node's alive key.
type Presence struct {
	Node   string            `json:"node"`
	Labels map[string]string `json:"labels,omitempty"`
	Lease  string            `json:"lease"`
	Since  time.Time         `json:"since"`
}

// Options configures a Cluster.
type Options struct {
	Prefix string // DefaultPrefix when empty
	Node   string
}

// Cluster reads and writes one cluster's shared state.
type Cluster struct {
	client *clientv3.Client
	prefix string
	node   string
}

// New returns a Cluster for a node.
func New(client *clientv3.Client, opts Options) *Cluster {
	p := strings.TrimSuffix(opts.Prefix, "/")
	if opts.Prefix == "" {
		p = DefaultPrefix
	}
	return &Cluster{client: client, prefix: p, node: opts.Node}
}

// Client returns the etcd client.
func (c *Cluster) Client() *clientv3.Client { return c.client }

// Prefix returns the cluster's key prefix, without a trailing slash.
func (c *Cluster) Prefix() string { return c.prefix }

// FailureKey returns the key of the failure flag.
func (c *Cluster) FailureKey() string { return c.prefix + "/failure" }

// LockPrefix returns the mutex prefix; lock keys are LockPrefix()+"/<lease>".
func (c *Cluster) LockPrefix() string { return c.prefix + "/lock" }

// StatusKey returns the key of a node's status.
func (c *Cluster) StatusKey(node string) string { return c.prefix + "/nodes/" + node + "/status" }

// AliveKey returns the key of a node's presence.
func (c *Cluster) AliveKey(node string) string { return c.prefix + "/nodes/" + node + "/alive" }

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

// NodeView is what ccm status shows of one node.
type NodeView struct {
	Name     string
	Status   *Status
	Presence *Presence
}

// View is the whole cluster as ccm status shows it.
type View struct {
	Failure *Failure
	// Holder is the node holding the lock ("" when free; the lease ID when
	// the holder has no presence key).
	Holder string
	Nodes  []NodeView // sorted by name
}

// View reads the failure flag, the lock holder and every node.
func (c *Cluster) View(ctx context.Context) (*View, error) {
	v := &View{}
	var err error
	if v.Failure, err = c.Failure(ctx); err != nil {
		return nil, err
	}
	resp, err := c.client.Get(ctx, c.prefix+"/nodes/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s/nodes/: %w", c.prefix, err)
	}
	nodes := map[string]*NodeView{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), c.prefix+"/nodes/")
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
	for _, n := range nodes {
		v.Nodes = append(v.Nodes, *n)
	}
	sort.Slice(v.Nodes, func(i, j int) bool { return v.Nodes[i].Name < v.Nodes[j].Name })
	v.Holder, err = c.holder(ctx, v.Nodes)
	return v, err
}

// holder finds the lock owner: the lock key with the lowest create
// revision, matched to a node by the lease in its presence.
func (c *Cluster) holder(ctx context.Context, nodes []NodeView) (string, error) {
	resp, err := c.client.Get(ctx, c.LockPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("read %s/: %w", c.LockPrefix(), err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	lease := fmt.Sprintf("%x", resp.Kvs[0].Lease)
	for _, n := range nodes {
		if n.Presence != nil && n.Presence.Lease == lease {
			return n.Name, nil
		}
	}
	return "lease " + lease, nil
}
