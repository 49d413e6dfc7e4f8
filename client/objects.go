package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// Object is one object to write: its type, its ID and its data.
type Object struct {
	Type, ID string
	Data     map[string]any
}

// MaxBatchBytes is the most object data PutObjects writes in one
// transaction, under etcd's default --max-request-bytes (1.5 MiB). A
// larger object is written alone, and etcd's own limit decides.
const MaxBatchBytes = 1 << 20

// PutObject writes one object, as PutObjects does.
func (c *Client) PutObject(ctx context.Context, typ, id string, data map[string]any) error {
	_, err := c.PutObjects(ctx, []Object{{Type: typ, ID: id, Data: data}})
	return err
}

// PutObjects is the one way ccm writes objects, for ccm object put and
// import as for a cluster API. It checks every object first: its type and
// ID against the key grammar, its data against its type's schema
// (Options.Schemas). If any is bad it writes nothing, and its error names
// every bad object's key, one per line. Else it writes the objects in
// order, in as few transactions as etcd allows (api.MaxTxnOps operations
// and MaxBatchBytes each), and returns the revision of the last. A batch
// larger than one transaction is not atomic: a failure part-way leaves
// the transactions before it written, and says how many objects were.
func (c *Client) PutObjects(ctx context.Context, objs []Object) (int64, error) {
	check, release, err := c.validator(ctx)
	if err != nil {
		return 0, err
	}
	values := make([]string, len(objs))
	var errs []error
	for i, o := range objs {
		key := c.keys.ObjectKey(o.Type, o.ID)
		if err := errors.Join(api.CheckName("type", o.Type), api.CheckName("id", o.ID)); err != nil {
			errs = append(errs, fmt.Errorf("object %q/%q: %w", o.Type, o.ID, err))
			continue
		}
		if o.Data == nil {
			errs = append(errs, fmt.Errorf("object %s: no data, want a JSON object", key))
			continue
		}
		if check != nil {
			if err := check.Validate(o.Type, o.Data); err != nil {
				errs = append(errs, fmt.Errorf("object %s: %w", key, err))
				continue
			}
		}
		var raw strings.Builder
		enc := json.NewEncoder(&raw)
		enc.SetEscapeHTML(false) // & and < as written, for etcdctl and ccm object get
		if err := enc.Encode(o.Data); err != nil {
			errs = append(errs, fmt.Errorf("object %s: %w", key, err))
			continue
		}
		values[i] = strings.TrimSuffix(raw.String(), "\n")
	}
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	var rev int64
	written := 0
	for _, batch := range batches(values) {
		ops := make([]clientv3.Op, 0, len(batch))
		for _, i := range batch {
			ops = append(ops, clientv3.OpPut(c.keys.ObjectKey(objs[i].Type, objs[i].ID), values[i]))
		}
		var cmps []clientv3.Cmp
		if c.opts.ReleaseSchemas != nil { // the schemas checked are still the promoted ones
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(c.keys.ReleasePointerKey()), "=", release))
		}
		rctx, cancel := c.request(ctx)
		resp, err := c.cli.Txn(rctx).If(cmps...).Then(ops...).Commit()
		cancel()
		first := objs[batch[0]]
		if err == nil && !resp.Succeeded {
			err = errors.New("another release was promoted meanwhile: put them again, to check them against its schemas")
		}
		if err != nil {
			return rev, fmt.Errorf("write the objects from %s (%d of %d written): %w", c.keys.ObjectKey(first.Type, first.ID), written, len(objs), err)
		}
		rev, written = resp.Header.Revision, written+len(batch)
	}
	return rev, nil
}

// batches cuts values into transactions of at most api.MaxTxnOps puts and
// MaxBatchBytes of data, in order; a value larger than that goes alone.
func batches(values []string) [][]int {
	var out [][]int
	var cur []int
	size := 0
	for i, v := range values {
		if len(cur) > 0 && (len(cur) == api.MaxTxnOps || size+len(v) > MaxBatchBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, i)
		size += len(v)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// validator is what PutObjects checks objects against: Schemas, or with
// ReleaseSchemas the promoted release's, with the pointer's revision the
// writes compare (0: none promoted).
func (c *Client) validator(ctx context.Context) (Validator, int64, error) {
	if c.opts.ReleaseSchemas == nil {
		return c.opts.Schemas, 0, nil
	}
	rctx, cancel := c.request(ctx)
	resp, err := c.cli.Get(rctx, c.keys.ReleasePointerKey())
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", c.keys.ReleasePointerKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return c.opts.Schemas, 0, nil
	}
	p, err := api.DecodeReleasePointer(c.keys.ReleasePointerKey(), resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("not a release pointer ccm wrote: %w", err)
	}
	v, err := c.opts.ReleaseSchemas(ctx, p.ID)
	if err != nil {
		return nil, 0, err
	}
	return v, resp.Kvs[0].ModRevision, nil
}
