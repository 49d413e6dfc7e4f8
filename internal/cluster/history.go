package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// HistoryRetention is how long a history record is kept: each record
// written deletes those older than this.
const HistoryRetention = 90 * 24 * time.Hour

// errHistoryTaken is returned when a history record's key already
// exists: records are never overwritten.
var errHistoryTaken = errors.New("history key taken")

// Record appends h to the history (at h.Time, now when zero), in one
// transaction that creates its key only if it does not exist and deletes
// every record older than HistoryRetention.
func (c *Cluster) Record(ctx context.Context, h api.History) error {
	if h.Time.IsZero() {
		h.Time = time.Now().UTC()
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	key := c.HistoryKey(h.Time, hex.EncodeToString(suffix[:]))
	raw, err := json.Marshal(h)
	if err != nil {
		return err
	}
	cutoff := c.HistoryKey(h.Time.Add(-HistoryRetention), "")
	resp, err := c.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(
		clientv3.OpPut(key, string(raw)),
		clientv3.OpDelete(c.HistoryPrefix(), clientv3.WithRange(cutoff)),
	).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, deniedHint(err, "write on "+c.HistoryPrefix()+" (an operator's role: ccm rbac print --operator NAME)"))
	}
	if !resp.Succeeded {
		return fmt.Errorf("write %s: %w", key, errHistoryTaken)
	}
	return nil
}

// History returns the newest limit records (every one when limit is 0),
// oldest first. A record that is not JSON is returned with its raw value
// as its detail.
func (c *Cluster) History(ctx context.Context, limit int64) ([]api.History, error) {
	resp, err := c.client.Get(ctx, c.HistoryPrefix(), clientv3.WithPrefix(), clientv3.WithLimit(limit),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.HistoryPrefix(), deniedHint(err, statusNeeds))
	}
	out := make([]api.History, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		h := &out[len(out)-1-i]
		if json.Unmarshal(kv.Value, h) != nil {
			*h = api.History{Action: "unreadable", Detail: string(kv.Value)}
		}
	}
	return out, nil
}
