package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// decodeCanaries reads the canary records from a range of CanaryPrefix,
// with the rule every agent and ccm status share: a record counts only
// under its node's own key, and only for a change older than the record
// itself (a node cannot approve a change before it exists, so a forged
// record can at most approve what its node could have converged).
func decodeCanaries(k api.Keys, kvs []*mvccpb.KeyValue) []api.Canary {
	var out []api.Canary
	for _, kv := range kvs {
		node, ok := k.CanaryOf(string(kv.Key))
		var c api.Canary
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
func newestCanary(records []api.Canary) api.Canary {
	var newest api.Canary
	for _, c := range records {
		if c.Revision > newest.Revision {
			newest = c
		}
	}
	return newest
}

// decodeRollout reads the strategy from its key's range response; a
// missing or unreadable value is the serial rollout.
func decodeRollout(resp *clientv3.GetResponse) api.Rollout {
	r := api.Serial
	if len(resp.Kvs) > 0 && json.Unmarshal(resp.Kvs[0].Value, &r) != nil {
		r = api.Serial
	}
	return r
}

// decodePause reads the pause from its key's range response, or nil.
// Pause returns the pause, or nil when the rollout is not paused.
func (c *Cluster) Pause(ctx context.Context) (*api.Pause, error) {
	resp, err := c.client.Get(ctx, c.PausedKey())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.PausedKey(), err)
	}
	return decodePause(resp), nil
}

func decodePause(resp *clientv3.GetResponse) *api.Pause {
	if len(resp.Kvs) == 0 {
		return nil
	}
	p := &api.Pause{}
	if err := json.Unmarshal(resp.Kvs[0].Value, p); err != nil {
		p.Reason = string(resp.Kvs[0].Value) // set by hand: still a pause
	}
	return p
}

// Gate is what decides, under the lock, whether a node may run: the
// failure flag and the pause, read at one revision.
type Gate struct {
	Failure  *api.Failure
	Pause    *api.Pause
	Revision int64
}

// SetPause pauses the rollout.
func (c *Cluster) SetPause(ctx context.Context, p api.Pause) error {
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
func (c *Cluster) SetRollout(ctx context.Context, r api.Rollout) error {
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
