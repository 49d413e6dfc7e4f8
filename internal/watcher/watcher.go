// Package watcher keeps the local mirror of <prefix>/objects/ in step with
// etcd and turns key events into thin events: the object types that changed,
// and the revision.
//
// It follows the prefix with package follow: list at revision R into the
// mirror, watch from R+1, resume after the last event applied, list again
// (and ask for a converge of everything) after a compaction or when etcd
// went back in its history, progress requests to detect a stalled stream,
// and a new stream for a refused token. What is its own is the mirror,
// SyncTo (a run's wait for the revision it read with the lock) and the
// confirmation that early progress notifications of older etcd servers
// need.
//
// Shutdown: Run returns nil when its context is cancelled.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/follow"
	"github.com/ccm-dev/ccm/internal/objects"
)

// Sink receives thin events. The debouncer is one.
type Sink interface {
	// Add reports that objects of types changed at revision rev.
	Add(rev int64, types ...string)
	// AddAll asks for a converge of everything.
	AddAll(reason string)
}

// Options configures a Watcher.
type Options struct {
	Prefix string
	// Liveness is how often the watcher asks etcd for a progress
	// notification; a stream that leaves one unanswered for a whole period
	// is restarted. Default 10s.
	Liveness time.Duration
	// Contact, when set, is called whenever etcd answered the watcher.
	Contact func()
	Logger  *zap.Logger
}

// Watcher feeds a Mirror and a Sink from an etcd watch.
type Watcher struct {
	client   *clientv3.Client
	mirror   *objects.Mirror
	sink     Sink
	opts     Options
	log      *zap.Logger
	follower *follow.Follower
	// early is whether some endpoint may send progress notifications
	// ahead of events (see confirm): 0 not known yet, 1 yes, 2 no.
	early atomic.Int32
}

// New returns a Watcher; Run starts it.
func New(client *clientv3.Client, mirror *objects.Mirror, sink Sink, opts Options) *Watcher {
	if opts.Liveness <= 0 {
		opts.Liveness = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	w := &Watcher{client: client, mirror: mirror, sink: sink, opts: opts, log: log.Named("watcher")}
	w.follower = follow.New(client, (*objectsHandler)(w), follow.Options{
		Name: "objects", Key: objects.Prefix(opts.Prefix), Prefix: true, Liveness: opts.Liveness,
		Contact: opts.Contact, Logger: w.log,
	})
	return w
}

// Synced reports whether the mirror is listed and the watch is healthy.
func (w *Watcher) Synced() bool { return w.follower.Synced() }

// Err is why the watch is not synced ("" when it is).
func (w *Watcher) Err() string { return w.follower.Err() }

// Run lists and watches until ctx is cancelled.
func (w *Watcher) Run(ctx context.Context) error {
	w.follower.Run(ctx)
	return nil
}

// objectsHandler is the Watcher as the follower's handler.
type objectsHandler Watcher

// Reset replaces the mirror with every object at one revision, and asks
// for a converge of everything.
func (h *objectsHandler) Reset(_ context.Context, kvs []*mvccpb.KeyValue, rev int64, reason string) error {
	w := (*Watcher)(h)
	objs := make([]objects.KV, len(kvs))
	for i, kv := range kvs {
		objs[i] = objects.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}
	}
	w.mirror.Reset(objs, rev)
	w.log.Info("listed objects", zap.Int("keys", len(objs)), zap.Int64("revision", rev), zap.String("reason", reason))
	w.sink.AddAll(reason)
	return nil
}

// Apply applies one watch response to the mirror.
func (h *objectsHandler) Apply(_ context.Context, resp clientv3.WatchResponse) error {
	w := (*Watcher)(h)
	if ce := w.log.Check(zap.DebugLevel, "watch response"); ce != nil {
		var evs []string
		for _, ev := range resp.Events {
			evs = append(evs, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
		}
		ce.Write(zap.Bool("created", resp.Created), zap.Bool("progress", resp.IsProgressNotify()),
			zap.Strings("events", evs), zap.Int64("header", resp.Header.Revision), zap.Int64("mirror", w.mirror.Revision()))
	}
	w.handle(resp)
	return nil
}

// handle applies one watch response to the mirror and reports the change.
func (w *Watcher) handle(resp clientv3.WatchResponse) {
	if len(resp.Events) > 0 {
		kvs := make([]objects.KV, len(resp.Events))
		for i, ev := range resp.Events {
			kvs[i] = objects.KV{Key: string(ev.Kv.Key), Value: ev.Kv.Value, ModRevision: ev.Kv.ModRevision, Deleted: ev.Type == clientv3.EventTypeDelete}
		}
		types := w.mirror.Apply(kvs)
		rev := resp.Events[len(resp.Events)-1].Kv.ModRevision
		w.mirror.SetRevision(rev)
		if len(types) > 0 {
			w.log.Debug("objects changed", zap.Strings("types", types), zap.Int64("revision", rev))
			w.sink.Add(rev, types...)
		}
	}
	if resp.IsProgressNotify() {
		w.mirror.SetRevision(resp.Header.Revision)
	}
}

// Lag returns the cluster's current revision minus the mirror's: how far
// the local copy is behind. Writes outside objects/ (status, presence,
// lock) are confirmed by a progress notification first, so an idle,
// synced mirror reads 0.
func (w *Watcher) Lag(ctx context.Context) (int64, error) {
	resp, err := w.client.Get(ctx, objects.Prefix(w.opts.Prefix), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	_ = w.SyncTo(ctx, resp.Header.Revision) // a lag is what remains if it cannot
	return max(0, resp.Header.Revision-w.mirror.Revision()), nil
}

// SyncTo waits until the mirror holds every change up to target, a
// revision the caller read from etcd (the agent reads it with the failure
// flag, once it holds the lock), so that the run renders the newest state.
func (w *Watcher) SyncTo(ctx context.Context, target int64) error {
	_, err := w.syncTo(ctx, target)
	return err
}

// syncTo is SyncTo; it returns the last event applied when the mirror
// was confirmed to hold what etcd held at target (see confirm).
func (w *Watcher) syncTo(ctx context.Context, target int64) (int64, error) {
	// Writes outside objects/ (status, lock) advance the revision without
	// a watch event; a progress notification confirms them.
	for w.mirror.Revision() < target {
		err := w.follower.RequestProgress(ctx)
		if errors.Is(err, follow.ErrNotWatching) { // starting, or resuming: wait for it
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		wait, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err = w.mirror.WaitRevision(wait, target)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	return w.confirm(ctx, target)
}

// Snapshot is the mirror once SyncTo(target) holds, at a revision the
// watcher can vouch for. Where an endpoint may send progress
// notifications ahead of events, that is what the confirmation vouched
// for (objects.Mirror.SnapshotConfirmed), not a notification's revision
// past it: a run that claimed the mirror's revision reported writes
// converged that it had not rendered (test:
// TestEveryReportedRevisionHoldsItsWritesOnDebiansEtcd).
func (w *Watcher) Snapshot(ctx context.Context, target int64) (*objects.Snapshot, error) {
	held, err := w.syncTo(ctx, target)
	if err != nil {
		return nil, err
	}
	if w.early.Load() == 2 { // every endpoint's progress follows its events
		return w.mirror.Snapshot(), nil
	}
	return w.mirror.SnapshotConfirmed(target, held), nil
}

// errCompacted says that the revision a run would have been confirmed at
// was compacted away first: the watch lists again, and the run claims no
// more than the mirror's last event applied.
var errCompacted = errors.New("the revision to confirm the mirror at was compacted")

// confirm waits until the mirror holds what etcd held at target: etcd 3.4
// before 3.4.25 (Debian 12 ships 3.4.23) and 3.5 before 3.5.8 may send a
// progress notification ahead of events, so a mirror whose revision
// reached target can still miss writes. Unless it applied an event past
// target already, one read of the prefix at target (its key count and its
// newest write, keys only) must match: no object written after the last
// event applied, and as many keys as the mirror holds. It returns that
// last event applied, read together with the count.
func (w *Watcher) confirm(ctx context.Context, target int64) (int64, error) {
	if !w.earlyProgress(ctx) {
		held, _ := w.mirror.Held()
		return held, nil
	}
	prefix := objects.Prefix(w.opts.Prefix)
	for {
		if held, _ := w.mirror.Held(); held >= target {
			return held, nil
		}
		// Both reads in one request: one round trip a run.
		resp, err := w.client.Txn(ctx).Then(
			clientv3.OpGet(prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(target)),
			clientv3.OpGet(prefix, append(clientv3.WithLastRev(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(target))...),
		).Commit()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return 0, fmt.Errorf("%w: revision %d", errCompacted, target)
		}
		if err != nil {
			return 0, err
		}
		count, newest := resp.Responses[0].GetResponseRange(), resp.Responses[1].GetResponseRange()
		var last int64
		if len(newest.Kvs) > 0 {
			last = newest.Kvs[0].ModRevision
		}
		if held, keys := w.mirror.Held(); held >= last && keys == count.Count {
			return held, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond): // the events are on their way
		}
	}
}

// earlyProgress reports whether an endpoint runs an etcd that may send a
// progress notification ahead of events, asking each endpoint its version
// once: the confirmation costs a request of two reads of the whole prefix
// per run (about 6 ms at 10,000 objects), which only those servers need.
func (w *Watcher) earlyProgress(ctx context.Context) bool {
	switch w.early.Load() {
	case 1:
		return true
	case 2:
		return false
	}
	early := false
	for _, ep := range w.client.Endpoints() {
		st, err := w.client.Status(ctx, ep)
		if err != nil {
			return true // not known: confirm, and ask again next time
		}
		early = early || sendsEarlyProgress(st.Version)
	}
	if early {
		w.early.Store(1)
		w.log.Info("etcd may send progress notifications ahead of events (3.4 before 3.4.25, 3.5 before 3.5.8): each run confirms the mirror with a read of the prefix")
	} else {
		w.early.Store(2)
	}
	return early
}

// sendsEarlyProgress reports whether etcd version v has the early
// progress notification (etcd-io/etcd#15220); a version that does not
// parse counts as having it.
func sendsEarlyProgress(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return true
	}
	switch {
	case major != 3:
		return major < 3
	case minor < 4:
		return true
	case minor == 4:
		return patch < 25
	case minor == 5:
		return patch < 8
	}
	return false
}
