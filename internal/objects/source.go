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

// The revision members of a snapshot file: ccm object export writes them
// so that an offline plan renders .Revision and .Object.Revision as the
// nodes do. They start with "$", which no type can.
const (
	// FileRevision is the member holding the snapshot's etcd revision.
	FileRevision = "$revision"
	// FileRevisions is the member holding each object's revision, shaped
	// {"<type>": {"<id>": <revision>}}.
	FileRevisions = "$revisions"
)

// ReadFile reads an offline snapshot from a JSON file shaped
// {"<type>": {"<id>": {...}}}, with the revisions of an export when the
// file has them (the snapshot's Revision is 0 when it has none). Unlike
// Load, any bad name or malformed object is an error naming it: a file is
// edited by hand and should be fixed. Each object is checked with v (nil:
// none).
func ReadFile(path string, v Validator) (*Snapshot, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return nil, fmt.Errorf("%s: want {\"<type>\": {\"<id>\": {...}}}: %w", path, err)
	}
	var revision int64
	revisions := map[string]map[string]int64{}
	for member, into := range map[string]any{FileRevision: &revision, FileRevisions: &revisions} {
		if value, ok := members[member]; ok {
			if err := json.Unmarshal(value, into); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", path, member, err)
			}
			delete(members, member)
		}
	}
	byType := map[string]map[string]json.RawMessage{}
	for t, value := range members {
		var objs map[string]json.RawMessage
		if err := json.Unmarshal(value, &objs); err != nil {
			return nil, fmt.Errorf("%s: want {\"<type>\": {\"<id>\": {...}}}: %w", path, err)
		}
		byType[t] = objs
	}
	const prefix = ""
	b := NewBuilder(prefix, revision, v)
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		for id, value := range byType[t] {
			b.Add(Key(prefix, t, id), value, revisions[t][id])
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
