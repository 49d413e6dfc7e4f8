// Package follow keeps a handler in step with one etcd key or prefix: the
// one list-and-watch loop of ccm, in the shape of client-go's reflector.
//
// Flow: list at revision R and hand the handler everything (Reset), then
// watch from R+1 and hand it each response (Apply). After a broken watch
// it resumes right after the last revision it handed over, so no event is
// lost and none is applied twice. It lists again, and resets the
// handler, when etcd compacted past that revision, or when etcd went back
// in its history (a cluster restored from a snapshot, or wiped): a
// linearizable read before each resume catches the latter.
//
// Every watch uses WithRequireLeader, so a member cut off from its
// cluster ends the watch instead of starving the follower silently. With
// Liveness, progress requests on a timer detect a stream that stopped
// answering (a frozen member). A watch that etcd refused for its token
// (expired or invalidated) resumes on a new gRPC stream, which the etcd
// client opens with a new token: on the same stream it would be refused
// forever.
//
// Errors are retried with one backoff policy (Backoff), and the loop
// returns only when its context ends.
package follow

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	"github.com/ccm-dev/ccm/internal/retry"
)

// maxBackoff is the ceiling of the retry delay while etcd does not answer:
// the one retry policy of everything that follows etcd.
const maxBackoff = 10 * time.Second

// Backoff returns the retry delay of that policy.
func Backoff() *retry.Delay { return retry.New(maxBackoff) }

// listTimeout bounds one list.
const listTimeout = time.Minute

// Handler is told what the key or prefix holds.
type Handler interface {
	// Reset replaces what the handler knows with kvs, read at revision
	// rev: at the start, and after a compaction or a restored etcd.
	// reason says which ("start", "compacted", "etcd restored"). An
	// error lists again after the backoff.
	Reset(ctx context.Context, kvs []*mvccpb.KeyValue, rev int64, reason string) error
	// Apply hands over one watch response: events in revision order, or
	// none (a progress notification). An error resumes the watch after
	// the backoff, from the first revision of resp.
	Apply(ctx context.Context, resp clientv3.WatchResponse) error
}

// Options configures a Follower.
type Options struct {
	// Name says what is followed, in logs and errors.
	Name   string
	Key    string
	Prefix bool
	// WatchOptions are added to the watch (filters, WithPrevKV).
	WatchOptions []clientv3.OpOption
	// ListOptions are added to the list (WithKeysOnly, WithCountOnly).
	ListOptions []clientv3.OpOption
	// Liveness, when above 0, is how often the follower asks etcd for a
	// progress notification; a stream that leaves one unanswered for a
	// whole period, while etcd holds revisions the follower lacks or does
	// not answer a read, is restarted.
	Liveness time.Duration
	// Contact, when set, is called whenever etcd answered: a list or a
	// watch response.
	Contact func()
	Logger  *zap.Logger
}

// Follower follows one key or prefix.
type Follower struct {
	cli    *clientv3.Client
	opts   Options
	h      Handler
	log    *zap.Logger
	synced atomic.Bool
	stream atomic.Int64 // generation of the gRPC stream
	// applied is the revision of the list or of the last event handed
	// to the handler: the watch resumes at applied+1. Progress
	// notifications never move it, since some etcd servers send them
	// ahead of events a catching-up watch still owes (etcd-io/etcd#15220).
	applied atomic.Int64
	// last is the newest revision etcd told of: applied, or a progress
	// notification's.
	last    atomic.Int64
	cluster uint64
	lastErr atomic.Pointer[string]
	// watching is the context of the watch under way (nil between
	// watches): progress requests are sent on its stream.
	watching atomic.Pointer[context.Context]
}

// New returns a Follower; Run starts it.
func New(cli *clientv3.Client, h Handler, opts Options) *Follower {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Follower{cli: cli, opts: opts, h: h, log: log}
}

// Synced reports whether the follower listed and its watch answers.
func (f *Follower) Synced() bool { return f.synced.Load() }

// Err is why the follower is not synced ("" when it is, or before its
// first attempt).
func (f *Follower) Err() string {
	if p := f.lastErr.Load(); p != nil && !f.Synced() {
		return *p
	}
	return ""
}

// ErrRestored ends a watch on an etcd that went back in its history.
var ErrRestored = errors.New("etcd went back in its history (restored from a snapshot, or wiped)")

// errStalled ends a watch that stopped answering progress requests.
var errStalled = errors.New("watch stream stalled")

// Run lists and watches until ctx is cancelled.
func (f *Follower) Run(ctx context.Context) {
	reason := "start"
	backoff := Backoff()
	for ctx.Err() == nil {
		if reason != "" {
			if err := f.list(ctx, reason); err != nil {
				f.failed(ctx, "list", err, backoff)
				continue
			}
			reason = ""
		} else if err := f.checkHistory(ctx); err != nil {
			if errors.Is(err, ErrRestored) {
				f.log.Error(f.opts.Name+": etcd history changed; listing again", zap.Error(err))
				reason = "etcd restored"
				continue
			}
			f.failed(ctx, "resume", err, backoff)
			continue
		}
		err := f.watch(ctx, backoff)
		f.synced.Store(false)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrCompacted):
			f.log.Warn(f.opts.Name+": watch compacted; listing again", zap.Error(err))
			reason = "compacted"
		case errors.Is(err, ErrRestored):
			f.log.Error(f.opts.Name+": etcd history changed; listing again", zap.Error(err))
			reason = "etcd restored"
		default:
			if refusedToken(err) {
				f.stream.Add(1) // a new stream gets a new token
			}
			f.failed(ctx, "watch", err, backoff)
		}
	}
}

// failed records and logs err, and waits out the backoff.
func (f *Follower) failed(ctx context.Context, what string, err error, backoff *retry.Delay) {
	if ctx.Err() != nil {
		return
	}
	msg := fmt.Sprintf("%s %s: %v", what, f.opts.Name, err)
	f.lastErr.Store(&msg)
	f.log.Warn(f.opts.Name+": "+what+" failed; will retry", zap.Error(err), zap.Duration("in", backoff.Next()))
	backoff.Wait(ctx)
}

// refusedToken reports whether etcd refused a watch for its auth token: a
// watch created on a stream whose token expired is cancelled with
// "permission denied" or "invalid auth token".
func refusedToken(err error) bool {
	e := rpctypes.Error(err)
	return errors.Is(e, rpctypes.ErrInvalidAuthToken) || errors.Is(e, rpctypes.ErrPermissionDenied) ||
		errors.Is(e, rpctypes.ErrAuthOldRevision) || errors.Is(e, rpctypes.ErrUserEmpty)
}

// list reads the key or prefix and resets the handler.
func (f *Follower) list(ctx context.Context, reason string) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	opts := append([]clientv3.OpOption{}, f.opts.ListOptions...)
	if f.opts.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	resp, err := f.cli.Get(lctx, f.opts.Key, opts...)
	if err != nil {
		return err
	}
	f.contact()
	if err := f.h.Reset(ctx, resp.Kvs, resp.Header.Revision, reason); err != nil {
		return err
	}
	f.cluster = resp.Header.ClusterId
	f.applied.Store(resp.Header.Revision)
	f.last.Store(resp.Header.Revision)
	return nil
}

// checkHistory is the linearizable read before a resume: a revision below
// the one the follower reached, or another cluster ID, is a restored or
// wiped etcd.
func (f *Follower) checkHistory(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	resp, err := f.cli.Get(rctx, f.opts.Key, clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	f.contact()
	return f.history(resp.Header, true)
}

// history compares a response header with what the follower has seen.
// The revision is compared only for a linearizable read, whose revision
// is never below one already committed; a watch response may come from a
// member that lags behind.
func (f *Follower) history(h *etcdserverpb.ResponseHeader, linearizable bool) error {
	if h == nil || f.cluster == 0 {
		return nil
	}
	if h.ClusterId != f.cluster {
		return fmt.Errorf("%w: cluster ID %x, was %x", ErrRestored, h.ClusterId, f.cluster)
	}
	if linearizable && h.Revision < f.last.Load() {
		return fmt.Errorf("%w: revision %d, %s reached %d", ErrRestored, h.Revision, f.opts.Name, f.last.Load())
	}
	return nil
}

// streamContext puts the follower's watch on a gRPC stream of its own:
// etcd answers a progress request only when every watch on the stream has
// started, so another watch must not hold the answer back; and a stream
// whose token etcd refused is replaced by the next generation.
func (f *Follower) streamContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx),
		"ccm-follow", f.opts.Name+"#"+strconv.FormatInt(f.stream.Load(), 10))
}

// ErrNotWatching is returned by RequestProgress between watches (at the
// start, and while a broken watch waits to resume).
var ErrNotWatching = errors.New("no watch under way")

// RequestProgress asks etcd for a progress notification on the
// follower's stream, and gives up when ctx ends. Between watches it fails
// at once: the etcd client would open a stream for the request, on ctx,
// and the next watch would join that stream and end with ctx.
func (f *Follower) RequestProgress(ctx context.Context) error {
	wctx := f.watching.Load()
	if wctx == nil {
		return ErrNotWatching
	}
	pctx, cancel := context.WithCancel(*wctx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	if err := f.cli.RequestProgress(pctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}

// watch follows from the last revision + 1 until the stream fails or ctx
// ends.
func (f *Follower) watch(ctx context.Context, backoff *retry.Delay) error {
	wctx, cancel := context.WithCancel(f.streamContext(ctx))
	defer cancel()
	from := f.applied.Load() + 1
	opts := append([]clientv3.OpOption{clientv3.WithRev(from), clientv3.WithCreatedNotify()}, f.opts.WatchOptions...)
	if f.opts.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	var tick <-chan time.Time
	if f.opts.Liveness > 0 {
		opts = append(opts, clientv3.WithProgressNotify())
		t := time.NewTicker(f.opts.Liveness)
		defer t.Stop()
		tick = t.C
	}
	wch := f.cli.Watch(wctx, f.opts.Key, opts...)
	f.watching.Store(&wctx)
	defer f.watching.Store(nil)
	// A probe is a progress request; the stream is stalled when a probe
	// sent a whole period ago is still unanswered.
	var probeSent time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
			if !probeSent.IsZero() && time.Since(probeSent) >= f.opts.Liveness {
				if err := f.checkIdle(ctx); err != nil {
					return err
				}
			}
			// Bounded: while the client reconnects, the request waits
			// for a stream that is not there.
			probeSent = time.Now()
			pctx, cancel := context.WithTimeout(wctx, f.opts.Liveness)
			if err := f.cli.RequestProgress(pctx); err != nil {
				f.log.Debug("progress request failed", zap.Error(err))
			}
			cancel()
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
			if err := f.history(resp.Header, false); err != nil {
				return err
			}
			if resp.IsProgressNotify() && resp.Header.Revision < f.last.Load() {
				// A restored etcd, or a member far behind: a
				// linearizable read tells which.
				if err := f.checkIdle(ctx); errors.Is(err, ErrRestored) {
					return err
				}
			}
			f.contact()
			if err := f.h.Apply(ctx, resp); err != nil {
				return err
			}
			if n := len(resp.Events); n > 0 {
				rev := resp.Events[n-1].Kv.ModRevision
				f.applied.Store(rev)
				f.last.Store(max(f.last.Load(), rev))
			}
			if resp.IsProgressNotify() {
				f.last.Store(max(f.last.Load(), resp.Header.Revision))
			}
			f.synced.Store(true)
			backoff.Reset()
		}
	}
}

// checkIdle decides what an unanswered progress request means. etcd does
// not answer while nothing was written since the watch started; that is
// an idle stream. If etcd is unreachable, or has revisions the follower
// lacks, the stream is stalled.
func (f *Follower) checkIdle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.opts.Liveness)
	defer cancel()
	resp, err := f.cli.Get(ctx, f.opts.Key, clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("%w: %w", errStalled, err)
	}
	f.contact()
	if err := f.history(resp.Header, true); err != nil {
		return err
	}
	if resp.Header.Revision > f.last.Load() {
		return fmt.Errorf("%w: etcd is at revision %d, %s at %d", errStalled, resp.Header.Revision, f.opts.Name, f.last.Load())
	}
	return nil
}

func (f *Follower) contact() {
	if f.opts.Contact != nil {
		f.opts.Contact()
	}
}
