// Package watcher keeps the local mirror of <prefix>/objects/ in step with
// etcd and turns key events into thin events: the object types that changed,
// and the revision.
//
// Flow: list the prefix at revision R into the mirror, then watch from R+1.
// After a disconnect the watch resumes right after the last event applied,
// so no event is lost; events at or below it are skipped, so none is
// applied twice. Progress notifications never move that point: some etcd
// servers send them ahead of events a catching-up watch still owes. When etcd has compacted past that revision (ErrCompacted),
// or the watch cannot resume, the watcher lists again and asks for a
// converge of everything.
//
// An etcd restored from a snapshot, or wiped, goes back in its history: a
// response whose cluster ID changed, or a linearizable read at a revision
// lower than the mirror's, makes the watcher list again and ask for a
// converge of everything, instead of waiting for revisions that will never
// come while it renders stale objects.
//
// The watch uses WithRequireLeader, so a member cut off from its cluster
// ends the watch instead of starving the agent silently, and progress
// requests on a timer of its own detect a stream that stopped answering.
//
// Shutdown: Run returns nil when its context is cancelled.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/retry"
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
	// MaxBackoff caps the retry delay while etcd is unreachable. Default 10s.
	MaxBackoff time.Duration
	Logger     *zap.Logger
}

// Watcher feeds a Mirror and a Sink from an etcd watch.
type Watcher struct {
	client *clientv3.Client
	mirror *objects.Mirror
	sink   Sink
	opts   Options
	log    *zap.Logger
	synced atomic.Bool
	// early is whether some endpoint may send progress notifications
	// ahead of events (see confirm): 0 not known yet, 1 yes, 2 no.
	early atomic.Int32
	// cluster is the ID of the etcd cluster the mirror was listed from.
	cluster uint64
}

// New returns a Watcher; Run starts it.
func New(client *clientv3.Client, mirror *objects.Mirror, sink Sink, opts Options) *Watcher {
	if opts.Liveness <= 0 {
		opts.Liveness = 10 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Watcher{client: client, mirror: mirror, sink: sink, opts: opts, log: log.Named("watcher")}
}

// Synced reports whether the mirror is listed and the watch is healthy.
func (w *Watcher) Synced() bool { return w.synced.Load() }

// errStalled ends a watch that stopped answering progress requests.
var errStalled = errors.New("watch stream stalled")

// errRestored ends a watch on an etcd that went back in its history.
var errRestored = errors.New("etcd went back in its history (restored from a snapshot, or wiped)")

// checkHistory compares a response header with what the watcher has seen.
// The revision is compared only for a linearizable read, whose revision is
// never below one already committed; a watch response may come from a
// member that lags behind.
func (w *Watcher) checkHistory(h *etcdserverpb.ResponseHeader, linearizable bool) error {
	if h == nil || w.cluster == 0 {
		return nil
	}
	if h.ClusterId != w.cluster {
		return fmt.Errorf("%w: cluster ID %x, was %x", errRestored, h.ClusterId, w.cluster)
	}
	if linearizable && h.Revision < w.mirror.Revision() {
		return fmt.Errorf("%w: revision %d, the mirror holds %d", errRestored, h.Revision, w.mirror.Revision())
	}
	return nil
}

// Run lists and watches until ctx is cancelled.
func (w *Watcher) Run(ctx context.Context) error {
	reason := "start"
	backoff := retry.New(w.opts.MaxBackoff)
	for {
		if reason != "" {
			if err := w.list(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				w.log.Warn("list failed; retrying", zap.Error(err), zap.Duration("in", backoff.Next()))
				if !backoff.Wait(ctx) {
					return nil
				}
				continue
			}
			w.sink.AddAll(reason)
			reason = ""
		}
		err := w.watch(ctx, backoff)
		w.synced.Store(false)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, rpctypes.ErrCompacted):
			w.log.Warn("watch compacted; listing again", zap.Error(err))
			reason = "compacted"
		case errors.Is(err, errRestored):
			w.log.Error("etcd history changed; listing again and converging everything", zap.Error(err))
			reason = "etcd restored"
		default:
			w.log.Warn("watch ended; resuming", zap.Error(err), zap.Int64("from", w.mirror.Applied()+1), zap.Duration("in", backoff.Next()))
			if !backoff.Wait(ctx) {
				return nil
			}
		}
	}
}

// list replaces the mirror with every object at one revision.
func (w *Watcher) list(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := w.client.Get(ctx, objects.Prefix(w.opts.Prefix), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list %s: %w", objects.Prefix(w.opts.Prefix), err)
	}
	kvs := make([]objects.KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = objects.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}
	}
	w.mirror.Reset(kvs, resp.Header.Revision)
	w.cluster = resp.Header.ClusterId
	w.log.Info("listed objects", zap.Int("keys", len(kvs)), zap.Int64("revision", resp.Header.Revision))
	return nil
}

// watch follows the prefix from the mirror's revision + 1 until the stream
// fails or ctx ends.
func (w *Watcher) watch(ctx context.Context, backoff *retry.Delay) error {
	wctx, cancel := context.WithCancel(streamContext(ctx))
	defer cancel()
	from := w.mirror.Applied() + 1
	wch := w.client.Watch(wctx, objects.Prefix(w.opts.Prefix), clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	tick := time.NewTicker(w.opts.Liveness)
	defer tick.Stop()
	// A probe is a progress request; the stream is stalled when a probe
	// sent a whole period ago is still unanswered.
	var probeSent time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if !probeSent.IsZero() && time.Since(probeSent) >= w.opts.Liveness {
				if err := w.checkIdle(ctx); err != nil {
					return err
				}
			}
			if err := w.client.RequestProgress(wctx); err != nil {
				w.log.Debug("progress request failed", zap.Error(err))
			}
			probeSent = time.Now()
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch channel closed")
			}
			probeSent = time.Time{}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("revision %d compacted (compact revision %d): %w", from, resp.CompactRevision, rpctypes.ErrCompacted)
			}
			if err := resp.Err(); err != nil {
				return err
			}
			if err := w.checkHistory(resp.Header, false); err != nil {
				return err
			}
			if resp.IsProgressNotify() && resp.Header.Revision < w.mirror.Revision() {
				// A restored etcd, or a member far behind: a
				// linearizable read tells which.
				if err := w.checkIdle(ctx); errors.Is(err, errRestored) {
					return err
				}
			}
			if ce := w.log.Check(zap.DebugLevel, "watch response"); ce != nil {
				var evs []string
				for _, ev := range resp.Events {
					evs = append(evs, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
				}
				ce.Write(zap.Bool("created", resp.Created), zap.Bool("progress", resp.IsProgressNotify()),
					zap.Strings("events", evs), zap.Int64("header", resp.Header.Revision), zap.Int64("mirror", w.mirror.Revision()))
			}
			w.synced.Store(true)
			backoff.Reset()
			w.handle(resp)
		}
	}
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

// streamContext gives the object watch a gRPC stream of its own. etcd
// answers a progress request only when every watch on the stream has
// started (start revision <= current revision), so a watch that shares the
// stream (the agent's flag watch) must not hold the answer back.
func streamContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), "ccm-watch", "objects")
}

// checkIdle decides what an unanswered progress request means. etcd does
// not answer while nothing was written since the watch started; that is an
// idle stream. If etcd is unreachable, or has revisions the mirror lacks,
// the stream is stalled.
func (w *Watcher) checkIdle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Liveness)
	defer cancel()
	resp, err := w.client.Get(ctx, objects.Prefix(w.opts.Prefix), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("%w: %w", errStalled, err)
	}
	if err := w.checkHistory(resp.Header, true); err != nil {
		return err
	}
	if resp.Header.Revision > w.mirror.Revision() {
		return fmt.Errorf("%w: etcd is at revision %d, the mirror at %d", errStalled, resp.Header.Revision, w.mirror.Revision())
	}
	return nil
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
	// Writes outside objects/ (status, lock) advance the revision without
	// a watch event; a progress notification confirms them.
	for w.mirror.Revision() < target {
		if err := w.client.RequestProgress(streamContext(ctx)); err != nil {
			return err
		}
		wait, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := w.mirror.WaitRevision(wait, target)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return w.confirm(ctx, target)
}

// confirm waits until the mirror holds what etcd held at target: etcd 3.4
// before 3.4.25 (Debian 12 ships 3.4.23) and 3.5 before 3.5.8 may send a
// progress notification ahead of events, so a mirror whose revision
// reached target can still miss writes. Unless it applied an event past
// target already, one read of the prefix at target (its key count and its
// newest write, keys only) must match: no object written after the last
// event applied, and as many keys as the mirror holds.
func (w *Watcher) confirm(ctx context.Context, target int64) error {
	if !w.earlyProgress(ctx) {
		return nil
	}
	prefix := objects.Prefix(w.opts.Prefix)
	for w.mirror.Applied() < target {
		count, err := w.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(target))
		if err != nil {
			return confirmErr(err)
		}
		newest, err := w.client.Get(ctx, prefix, append(clientv3.WithLastRev(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(target))...)
		if err != nil {
			return confirmErr(err)
		}
		var last int64
		if len(newest.Kvs) > 0 {
			last = newest.Kvs[0].ModRevision
		}
		if w.mirror.Applied() >= last && w.mirror.Keys() == count.Count {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // the events are on their way
		}
	}
	return nil
}

// earlyProgress reports whether an endpoint runs an etcd that may send a
// progress notification ahead of events, asking each endpoint its version
// once: the confirmation costs two reads of the whole prefix per run
// (about 6 ms at 10,000 objects), which only those servers need.
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

// confirmErr is nil for a target compacted away (the watch relists, and a
// later run confirms), and err otherwise.
func confirmErr(err error) error {
	if errors.Is(err, rpctypes.ErrCompacted) {
		return nil
	}
	return err
}
