package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Pause is the value of <prefix>/paused: while it exists, agents apply
// nothing and keep collecting changes. It implies no failure.
type Pause struct {
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

// Rollout is the rollout strategy, <prefix>/rollout. Absent, it is the
// serial rollout: one node at a time, no canary.
type Rollout struct {
	// Batch is how many nodes converge at once (lock slots); at least 1.
	Batch int `json:"batch"`
	// Canary makes the first node to converge a change do so alone; the
	// others start once it reported converged for it.
	Canary bool `json:"canary,omitempty"`
}

// Serial is the default strategy.
var Serial = Rollout{Batch: 1}

// Slots is how many nodes may hold the lock at once.
func (r Rollout) Slots() int { return max(r.Batch, 1) }

// String describes the strategy for ccm status.
func (r Rollout) String() string {
	s := "serial (one node at a time)"
	if r.Slots() > 1 {
		s = fmt.Sprintf("batches of %d nodes", r.Slots())
	}
	if r.Canary {
		s += ", each change first on one canary node"
	}
	return s
}

// Canary is a canary record, <prefix>/canary/<node>: the last change
// the node converged as its change's canary, written with its status.
type Canary struct {
	// Node is the node whose key holds the record (a value's own claim
	// is ignored).
	Node     string `json:"node"`
	Revision int64  `json:"revision"`
}

// decodeCanaries reads the canary records from a range of CanaryPrefix,
// with the rule every agent and ccm status share: a record counts only
// under its node's own key, and only for a change older than the record
// itself (a node cannot approve a change before it exists, so a forged
// record can at most approve what its node could have converged).
func (k Keys) decodeCanaries(kvs []*mvccpb.KeyValue) []Canary {
	var out []Canary
	for _, kv := range kvs {
		node, ok := k.CanaryOf(string(kv.Key))
		var c Canary
		if !ok || json.Unmarshal(kv.Value, &c) != nil || c.Revision <= 0 || c.Revision >= kv.ModRevision {
			continue
		}
		c.Node = node
		out = append(out, c)
	}
	return out
}

// newestCanary is the record of the newest change a canary converged
// (zero when none).
func newestCanary(records []Canary) Canary {
	var newest Canary
	for _, c := range records {
		if c.Revision > newest.Revision {
			newest = c
		}
	}
	return newest
}

// decodeRollout reads the strategy from its key's range response; a
// missing or unreadable value is the serial rollout.
func decodeRollout(resp *clientv3.GetResponse) Rollout {
	r := Serial
	if len(resp.Kvs) > 0 && json.Unmarshal(resp.Kvs[0].Value, &r) != nil {
		r = Serial
	}
	return r
}

// decodePause reads the pause from its key's range response, or nil.
// Pause returns the pause, or nil when the rollout is not paused.
func (c *Cluster) Pause(ctx context.Context) (*Pause, error) {
	resp, err := c.client.Get(ctx, c.PausedKey())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.PausedKey(), err)
	}
	return decodePause(resp), nil
}

func decodePause(resp *clientv3.GetResponse) *Pause {
	if len(resp.Kvs) == 0 {
		return nil
	}
	p := &Pause{}
	if err := json.Unmarshal(resp.Kvs[0].Value, p); err != nil {
		p.Reason = string(resp.Kvs[0].Value) // set by hand: still a pause
	}
	return p
}

// Gate is what decides, under the lock, whether a node may run: the
// failure flag and the pause, read at one revision.
type Gate struct {
	Failure  *Failure
	Pause    *Pause
	Revision int64
}

// SetPause pauses the rollout.
func (c *Cluster) SetPause(ctx context.Context, p Pause) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := c.client.Put(ctx, c.PausedKey(), string(raw)); err != nil {
		return fmt.Errorf("write %s: %w", c.PausedKey(), err)
	}
	return nil
}

// SetRollout writes the rollout strategy; agents follow it at once.
func (c *Cluster) SetRollout(ctx context.Context, r Rollout) error {
	if r.Batch < 1 {
		return errors.New("a batch is at least 1 node")
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := c.client.Put(ctx, c.RolloutKey(), string(raw)); err != nil {
		return fmt.Errorf("write %s: %w", c.RolloutKey(), err)
	}
	return nil
}
