package objects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Load reads every object under prefix in one Get, so the snapshot is
// consistent at a single revision, and checks each with v (nil: none).
func Load(ctx context.Context, kv clientv3.KV, prefix string, v Validator) (*Snapshot, error) {
	resp, err := kv.Get(ctx, Prefix(prefix), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Prefix(prefix), err)
	}
	b := NewBuilder(prefix, resp.Header.Revision, v)
	for _, kv := range resp.Kvs {
		b.Add(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return b.Snapshot(), nil
}

// ReadFile reads an offline snapshot from a JSON file shaped
// {"<type>": {"<id>": {...}}}. Unlike Load, any bad name or malformed object
// is an error naming it: a file is edited by hand and should be fixed.
// Each object is checked with v (nil: none).
func ReadFile(path string, v Validator) (*Snapshot, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var byType map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &byType); err != nil {
		return nil, fmt.Errorf("%s: want {\"<type>\": {\"<id>\": {...}}}: %w", path, err)
	}
	const prefix = ""
	b := NewBuilder(prefix, 0, v)
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		for id, value := range byType[t] {
			b.Add(Key(prefix, t, id), value, 0)
		}
	}
	s := b.Snapshot()
	if len(s.Ignored) > 0 {
		return nil, fmt.Errorf("%s: %w", path, s.Ignored[0])
	}
	var errs []error
	for _, t := range types {
		for _, err := range s.Invalid[t] {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}
