package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ccm-dev/ccm/api"
)

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

// Pause returns the pause, or nil when the rollout is not paused.
func (c *Cluster) Pause(ctx context.Context) (*api.Pause, error) {
	resp, err := c.client.Get(ctx, c.PausedKey())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.PausedKey(), err)
	}
	return api.DecodePause(resp.Kvs), nil
}

// Gate is what decides, under the lock, whether a node may run: the
// failure flag and the pause, read at one revision.
type Gate struct {
	Failure  *api.Failure
	Pause    *api.Pause
	Revision int64
	// Quarantines is every quarantine record, and ReleasePointer the
	// release pointer's value (nil: none) at ReleaseRevision, its mod
	// revision: read in the same request, so that a run has what it holds
	// back and what it converges without a round trip of its own.
	Quarantines     []api.Quarantine
	ReleasePointer  []byte
	ReleaseRevision int64
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
