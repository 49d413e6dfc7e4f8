package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// StoredObject is an object as etcd holds it: its type, ID, data and the
// revision it was last written at.
type StoredObject struct {
	Type, ID string
	Data     map[string]any
	Revision int64
}

// ErrNotObject is the error of an object whose value is not a JSON
// object: agents ignore it, and so do ListObjects and WatchObjects.
var ErrNotObject = errors.New("not a JSON object")

// decodeObject reads an object's key and value; ok is false for a key
// outside the object grammar. A value that is not a JSON object is
// ErrNotObject.
func (c *Client) decodeObject(kv *mvccpb.KeyValue) (o StoredObject, ok bool, err error) {
	rest, found := strings.CutPrefix(string(kv.Key), c.keys.ObjectsPrefix())
	typ, id, cut := strings.Cut(rest, "/")
	if !found || !cut || !api.ValidName(typ) || !api.ValidName(id) {
		return StoredObject{}, false, nil
	}
	o = StoredObject{Type: typ, ID: id, Revision: kv.ModRevision}
	if kv.Value != nil {
		if err := json.Unmarshal(kv.Value, &o.Data); err != nil || o.Data == nil {
			return o, true, fmt.Errorf("object %s: %w", kv.Key, ErrNotObject)
		}
	}
	return o, true, nil
}

// GetObject reads one object; nil when it does not exist.
func (c *Client) GetObject(ctx context.Context, typ, id string) (*StoredObject, error) {
	if err := errors.Join(api.CheckName("type", typ), api.CheckName("id", id)); err != nil {
		return nil, err
	}
	key := c.keys.ObjectKey(typ, id)
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	o, _, err := c.decodeObject(resp.Kvs[0])
	if err != nil {
		return nil, err
	}
	return &o, nil
}

// ListObjects reads every object of typ (every type when typ is ""), by
// type then ID, at one revision, which it returns: WatchObjects from it
// misses nothing. Keys outside the object grammar and values that are
// not JSON objects are left out, as agents leave them out.
func (c *Client) ListObjects(ctx context.Context, typ string) ([]StoredObject, int64, error) {
	prefix := c.keys.ObjectsPrefix()
	if typ != "" {
		if err := api.CheckName("type", typ); err != nil {
			return nil, 0, err
		}
		prefix += typ + "/"
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", prefix, err)
	}
	var out []StoredObject
	for _, kv := range resp.Kvs {
		if o, ok, err := c.decodeObject(kv); ok && err == nil {
			out = append(out, o)
		}
	}
	return out, resp.Header.Revision, nil
}

// DeleteObject deletes one object; it reports whether it existed.
func (c *Client) DeleteObject(ctx context.Context, typ, id string) (bool, error) {
	if err := errors.Join(api.CheckName("type", typ), api.CheckName("id", id)); err != nil {
		return false, err
	}
	key := c.keys.ObjectKey(typ, id)
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Delete(rctx, key)
	if err != nil {
		return false, fmt.Errorf("delete %s: %w", key, err)
	}
	return resp.Deleted > 0, nil
}

// ObjectEvent is one change of an object: written (Data set) or deleted.
type ObjectEvent struct {
	StoredObject
	Deleted bool
}

// WatchObjects yields every change to the objects of typ (every type when
// typ is "") after revision after (ListObjects' revision), in order,
// until ctx ends or the watch fails: a compacted revision, or a watch
// etcd cancelled, is yielded as an error and ends it (list again, and
// watch from the new revision). Keys outside the object grammar and
// values that are not JSON objects are left out.
func (c *Client) WatchObjects(ctx context.Context, typ string, after int64) iter.Seq2[ObjectEvent, error] {
	return func(yield func(ObjectEvent, error) bool) {
		prefix := c.keys.ObjectsPrefix()
		if typ != "" {
			if err := api.CheckName("type", typ); err != nil {
				yield(ObjectEvent{}, err)
				return
			}
			prefix += typ + "/"
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := c.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(after+1))
		for resp := range ch {
			if err := resp.Err(); err != nil {
				yield(ObjectEvent{}, fmt.Errorf("watch %s: %w", prefix, err))
				return
			}
			for _, ev := range resp.Events {
				o, ok, err := c.decodeObject(ev.Kv)
				if !ok || (err != nil && ev.Type != clientv3.EventTypeDelete) {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					o.Data = nil
				}
				if !yield(ObjectEvent{StoredObject: o, Deleted: ev.Type == clientv3.EventTypeDelete}, nil) {
					return
				}
			}
		}
		if ctx.Err() == nil {
			yield(ObjectEvent{}, fmt.Errorf("watch %s: closed", prefix))
		}
	}
}
