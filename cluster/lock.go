package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrSessionLost is returned when the session's lease ended while waiting
// for the lock.
var ErrSessionLost = errors.New("session lease expired")

// ErrNodeTaken is returned when another live session already announces
// the node: two agents must never serve one node name.
var ErrNodeTaken = errors.New("node already served by another live agent")

// SessionOptions configures a Session.
type SessionOptions struct {
	// TTL of the lease, rounded up to seconds (at least 1); DefaultLockTTL
	// when zero.
	TTL time.Duration
	// Presence, when set, is written to the node's alive key on the lease.
	// One-shot commands leave it nil: the alive key is the agent's.
	Presence *Presence
	// LeaseFile, when set, records the lease ID. A new session first
	// revokes the lease a previous process recorded there, so that a
	// restarted lock holder does not wait out its own dead lease.
	LeaseFile string
}

// Session is a node's lease, kept alive until Close or until etcd cannot be
// reached for its TTL. The node's presence key lives on it, and so does its
// place in the cluster lock.
type Session struct {
	c       *Cluster
	session *concurrency.Session
	ttl     time.Duration
	// renewed is when etcd last confirmed the lease (a keep-alive
	// response, or the grant), by the local monotonic clock: the lease
	// lives at least until renewed + ttl.
	mu      sync.Mutex
	renewed time.Time
	stopKA  context.CancelFunc
}

// NewSession grants a lease and, with opts.Presence, announces the node on
// it.
func (c *Cluster) NewSession(ctx context.Context, opts SessionOptions) (*Session, error) {
	ttl := opts.TTL
	if ttl == 0 {
		ttl = DefaultLockTTL
	}
	if opts.LeaseFile != "" {
		c.revokeRecorded(ctx, opts.LeaseFile)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	// Grant under ctx, so an unreachable etcd does not block forever, but
	// keep the lease alive independently of ctx: a shutdown finishes its
	// step and releases the lock explicitly.
	asked := time.Now()
	lease, err := c.client.Grant(ctx, max(1, secs))
	if err != nil {
		return nil, fmt.Errorf("lock session: %w", err)
	}
	session, err := concurrency.NewSession(c.client, concurrency.WithLease(lease.ID))
	if err != nil {
		return nil, fmt.Errorf("lock session: %w", err)
	}
	s := &Session{c: c, session: session, ttl: time.Duration(lease.TTL) * time.Second, renewed: asked}
	s.followKeepAlive(lease.ID)
	if opts.LeaseFile != "" {
		if err := recordLease(opts.LeaseFile, lease.ID); err != nil {
			s.Close()
			return nil, err
		}
	}
	if opts.Presence != nil {
		if err := s.Announce(ctx, *opts.Presence); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// revokeRecorded revokes the lease recorded in file, if any. Errors are
// ignored: the lease may have expired already.
func (c *Cluster) revokeRecorded(ctx context.Context, file string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return
	}
	id, err := strconv.ParseInt(string(raw), 16, 64)
	if err != nil {
		return
	}
	_, _ = c.client.Revoke(ctx, clientv3.LeaseID(id))
}

func recordLease(file string, id clientv3.LeaseID) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%x", int64(id))), 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// followKeepAlive records each keep-alive response of the session's lease.
// The etcd client sends one keep-alive per lease, however many listen.
func (s *Session) followKeepAlive(id clientv3.LeaseID) {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopKA = cancel
	ch, err := s.c.client.KeepAlive(ctx, id)
	if err != nil {
		cancel()
		return
	}
	go func() {
		for resp := range ch {
			s.mu.Lock()
			s.renewed, s.ttl = time.Now(), time.Duration(resp.TTL)*time.Second
			s.mu.Unlock()
		}
	}()
}

// fenceMargin is taken off the lease's lifetime by the local clock: the
// time etcd renewed the lease is before the response arrived here, and
// clocks run at slightly different speeds.
func fenceMargin(ttl time.Duration) time.Duration { return max(ttl/5, 500*time.Millisecond) }

// renewal is the last renewal etcd confirmed, and the lease's TTL.
func (s *Session) renewal() (time.Time, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renewed, s.ttl
}

// Deadline is when the lease may end at the earliest, by the local
// monotonic clock: the last renewal etcd confirmed, plus the TTL, minus a
// margin. Past it another node may hold the lock.
func (s *Session) Deadline() time.Time {
	renewed, ttl := s.renewal()
	return renewed.Add(ttl - fenceMargin(ttl))
}

// Lease returns the session's lease as hex, as presence records show it.
func (s *Session) Lease() string { return fmt.Sprintf("%x", int64(s.session.Lease())) }

// Announce writes the node's presence on the session lease. The alive key
// is created only if it is absent or already this session's, in one
// transaction: if another live session holds it, Announce fails with
// ErrNodeTaken.
func (s *Session) Announce(ctx context.Context, p Presence) error {
	p.Node, p.Lease = s.c.node, s.Lease()
	raw, _ := json.Marshal(p)
	key, lease := s.c.AliveKey(s.c.node), s.session.Lease()
	put := clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))
	resp, err := s.c.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(put).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if resp.Succeeded {
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && clientv3.LeaseID(kvs[0].Lease) != lease {
		var other Presence
		_ = json.Unmarshal(kvs[0].Value, &other)
		if !p.sameInstance(other) {
			return fmt.Errorf("%w: %s is held by lease %s, alive since %s", ErrNodeTaken, key, other.Lease, other.Since.Format(time.RFC3339))
		}
		// This agent's own previous session, which etcd kept (an outage
		// longer than the TTL, and a new leader renews every lease):
		// end it, and take the key if it is still that session's.
		if _, err := s.c.client.Revoke(ctx, clientv3.LeaseID(kvs[0].Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("revoke the previous session %s of %s: %w", other.Lease, key, err)
		}
		resp, err = s.c.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(put).Commit()
		if err != nil {
			return fmt.Errorf("write %s: %w", key, err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("write %s: %w", key, ErrNodeTaken)
		}
		return nil
	}
	resp, err = s.c.client.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).Then(put).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("write %s: %w", key, ErrNodeTaken)
	}
	return nil
}

// Done is closed when the lease is gone (expired, revoked or closed).
func (s *Session) Done() <-chan struct{} { return s.session.Done() }

// Lost reports whether the lease is gone (expired, revoked or closed).
func (s *Session) Lost() bool {
	select {
	case <-s.session.Done():
		return true
	default:
		return false
	}
}

// Context returns a context that is cancelled with ErrLockLost when the
// session is lost, or when parent is done.
func (s *Session) Context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	stop := context.AfterFunc(s.session.Ctx(), func() { cancel(ErrLockLost) })
	return ctx, func() { stop(); cancel(context.Canceled) }
}

// closeTimeout bounds the revocation at Close: past it, the lease expires
// on its own, and a shutdown must not wait for an etcd that is gone.
const closeTimeout = 5 * time.Second

// Close revokes the lease, which also removes the presence key and any
// lock key of the session.
func (s *Session) Close() {
	if s.stopKA != nil {
		s.stopKA()
	}
	s.session.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_, _ = s.c.client.Revoke(ctx, s.session.Lease())
}

// Lock is a held slot of the cluster lock.
type Lock struct {
	s      *Session
	key    string
	rev    int64        // create revision of key: ownership is key still at rev
	slots  int          // the slots it may share the lock with
	wide   bool         // the strategy has several slots
	canary bool         // it holds the lock alone as its change's canary
	gate   *Gate        // read with the last check of the queue
	target func() int64 // the change the holder will converge (canary)
	// deleted is set once a watch saw the lock key deleted (by an
	// operator, or anyone); stopWatch ends that watch.
	deleted   atomic.Bool
	stopWatch context.CancelFunc
}

// Lock waits for a slot of the cluster lock. Like etcd's
// concurrency.Mutex, it queues a key <prefix>/lock/<lease> and holds the
// lock once every key created before it is gone, or, with a rollout
// strategy of N slots, once fewer than N are left; unlike it, the key's
// value is the node's name (so status can name holders and waiters), and
// each wait watches from the revision after the one it read, which etcd
// serves at once rather than from its 100 ms catch-up loop.
//
// target, when set, returns the change the caller will converge: the
// revision of the newest object event it has seen. With a canary strategy
// it may share the lock only once a node reported that revision (or a
// later one) converged; until then it runs alone, as the canary.
func (s *Session) Lock(ctx context.Context, target func() int64) (*Lock, error) {
	cli, prefix := s.c.client, s.c.LockPrefix()
	key := prefix + s.Lease()
	l := &Lock{s: s, key: key, target: target}
	// The queue is read in the same request that joins it: without
	// contention the lock is one round trip.
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(append([]clientv3.Op{clientv3.OpPut(key, s.c.node, clientv3.WithLease(s.session.Lease()))}, l.queueReads(0)...)...).
		Else(append([]clientv3.Op{clientv3.OpGet(key)}, l.queueReads(0)...)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", prefix, err)
	}
	l.rev = resp.Header.Revision
	if !resp.Succeeded {
		l.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	if err := l.waitPredecessors(ctx, resp.Responses[1:], resp.Header.Revision); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = cli.Delete(dctx, key)
		return nil, fmt.Errorf("lock %s: %w", prefix, err)
	}
	l.watchKey()
	return l, nil
}

// watchKey follows the holder's own lock key, so that Fence knows it was
// deleted without a round trip. It watches from the revision after the
// queue read that found the key still there (the gate's): etcd serves
// that at once, where an older one would replay the history since the
// key was queued.
func (l *Lock) watchKey() {
	ctx, cancel := context.WithCancel(context.Background())
	l.stopWatch = cancel
	wch := l.s.c.client.Watch(clientv3.WithRequireLeader(ctx), l.key, clientv3.WithRev(l.gate.Revision+1), clientv3.WithFilterPut())
	go func() {
		for wr := range wch {
			if len(wr.Events) > 0 {
				l.deleted.Store(true)
				return
			}
		}
	}()
}

// Fence returns nil while this holder may still act on the node: the
// lease lives by the local clock (see Session.Deadline), the session is
// not lost, and no watch saw the lock key deleted. It makes no round
// trip; the applier calls it before each rename and each command. A
// process paused between Fence and the system call it guards can still
// act late: that window is what remains.
func (l *Lock) Fence() error {
	switch {
	case l.s.Lost():
		return fmt.Errorf("%w: the session ended", ErrLockLost)
	case l.deleted.Load():
		return fmt.Errorf("%w: the lock key %s was deleted", ErrLockLost, l.key)
	case time.Now().After(l.s.Deadline()):
		renewed, ttl := l.s.renewal()
		return fmt.Errorf("%w: the lease may have expired (no keep-alive for %s, TTL %s)", ErrLockLost,
			time.Since(renewed).Round(time.Millisecond), ttl)
	}
	return nil
}

// heldMark follows the node name in the value of a lock key whose node
// holds one of several slots, so that ccm status can name every holder.
const heldMark = " running"

// queueReads are what tells whether this node holds a slot, and what a
// holder checks first: the rollout strategy, the lock keys (created before
// maxCreate, or all with 0, newest first), this node's own key, the
// failure flag, the pause and the canary, in this order.
func (l *Lock) queueReads(maxCreate int64) []clientv3.Op {
	preds := append(clientv3.WithLastCreate(), clientv3.WithKeysOnly(), clientv3.WithLimit(0))
	if maxCreate > 0 {
		preds = append(preds, clientv3.WithMaxCreateRev(maxCreate))
	}
	return []clientv3.Op{
		clientv3.OpGet(l.s.c.RolloutKey()),
		clientv3.OpGet(l.s.c.LockPrefix(), preds...),
		clientv3.OpGet(l.key, clientv3.WithKeysOnly()),
		clientv3.OpGet(l.s.c.FailureKey()),
		clientv3.OpGet(l.s.c.PausedKey()),
		clientv3.OpGet(l.s.c.CanaryKey()),
	}
}

// waitPredecessors returns once fewer lock keys created before l's exist
// than the rollout strategy has slots (one: no key before it), and l's
// key still does. A change of strategy takes effect at once. reads are
// the responses to queueReads at revision rev.
func (l *Lock) waitPredecessors(ctx context.Context, reads []*etcdserverpb.ResponseOp, rev int64) error {
	cli := l.s.c.client
	ctx, cancel := l.s.Context(ctx)
	defer cancel()
	for {
		if own := reads[2].GetResponseRange().Kvs; len(own) == 0 || own[0].CreateRevision != l.rev {
			return ErrSessionLost
		}
		strategy := decodeRollout((*clientv3.GetResponse)(reads[0].GetResponseRange()))
		l.slots, l.canary = l.slotsFor(strategy, decodeCanary((*clientv3.GetResponse)(reads[5].GetResponseRange())))
		l.wide = strategy.Slots() > 1
		var preds []*mvccpb.KeyValue // newest first
		for _, kv := range reads[1].GetResponseRange().Kvs {
			if kv.CreateRevision < l.rev {
				preds = append(preds, kv)
			}
		}
		if len(preds) < l.slots {
			l.gate = &Gate{
				Failure:  decodeFailure((*clientv3.GetResponse)(reads[3].GetResponseRange())),
				Pause:    decodePause((*clientv3.GetResponse)(reads[4].GetResponseRange())),
				Revision: rev,
			}
			break
		}
		// One slot: the key just before this one going is the turn.
		// Several: any key before this one going may be.
		if err := l.waitTurn(ctx, string(preds[0].Key), rev+1); err != nil {
			return lockWaitErr(ctx, err)
		}
		resp, err := cli.Txn(ctx).Then(l.queueReads(l.rev - 1)...).Commit()
		if err != nil {
			return lockWaitErr(ctx, err)
		}
		reads, rev = resp.Responses, resp.Header.Revision
	}
	if l.wide { // fenced, and the key stays on its lease
		_, err := cli.Txn(ctx).If(l.isOwner()).Then(clientv3.OpPut(l.key, l.s.c.node+heldMark, clientv3.WithIgnoreLease())).Commit()
		return lockWaitErr(ctx, err)
	}
	return nil
}

// Gate is the failure flag and the pause as read when the lock was had,
// in the same request.
func (l *Lock) Gate() Gate { return *l.gate }

// slotsFor is how many nodes this one may share the lock with under
// strategy r, and whether it is the canary of its change: its batch once a
// canary converged its change (or a later one), one (alone) until then.
func (l *Lock) slotsFor(r Rollout, canary Canary) (int, bool) {
	if !r.Canary || r.Slots() == 1 || l.target == nil || canary.Revision >= l.target() {
		return r.Slots(), false
	}
	return 1, true
}

// waitTurn returns when, from revision rev, the rollout strategy changes
// or a lock key that may free this one's turn is deleted: last, the newest
// key before it, with one slot; any key created before it with several.
func (l *Lock) waitTurn(ctx context.Context, last string, rev int64) error {
	cli := l.s.c.client
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	key, opts := last, []clientv3.OpOption{clientv3.WithRev(rev), clientv3.WithFilterPut()}
	if l.wide { // several slots, or one while a canary runs: any key may be the turn
		key, opts = l.s.c.LockPrefix(), append(opts, clientv3.WithPrefix(), clientv3.WithPrevKV())
	}
	keys := cli.Watch(wctx, key, opts...)
	strategy := cli.Watch(wctx, l.s.c.RolloutKey(), clientv3.WithRev(rev))
	for {
		select {
		case wr, ok := <-keys:
			if err := watchErr(ctx, wr, ok); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				if !l.wide || ev.PrevKv == nil || ev.PrevKv.CreateRevision < l.rev {
					return nil
				}
			}
		case wr, ok := <-strategy:
			if err := watchErr(ctx, wr, ok); err != nil {
				return err
			}
			if len(wr.Events) > 0 {
				return nil
			}
		}
	}
}

// watchErr is why a watch response ends a wait, or nil.
func watchErr(ctx context.Context, wr clientv3.WatchResponse, ok bool) error {
	switch {
	case !ok && ctx.Err() != nil:
		return ctx.Err()
	case !ok:
		return errors.New("watch closed")
	}
	return wr.Err()
}

func lockWaitErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrLockLost) {
		return ErrSessionLost
	}
	return err
}

// Context returns a context cancelled with ErrLockLost when the session
// holding the lock is lost. A run passes it down so that it stops before
// the next configuration.
func (l *Lock) Context(parent context.Context) (context.Context, context.CancelFunc) {
	return l.s.Context(parent)
}

// isOwner is the compare that fences every write made under the lock.
func (l *Lock) isOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)
}

// put writes key under the lock, in a transaction guarded by ownership.
func (l *Lock) put(ctx context.Context, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	resp, err := l.s.c.client.Txn(ctx).If(l.isOwner()).Then(clientv3.OpPut(key, string(raw))).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("write %s: %w", key, ErrLockLost)
	}
	return nil
}

// SetFailure raises the failure flag.
func (l *Lock) SetFailure(ctx context.Context, f Failure) error {
	return l.put(ctx, l.s.c.FailureKey(), f)
}

// WriteStatus records this node's last run.
//
// A canary that converged also records its change, in the same
// transaction: the other nodes may then share the lock.
func (l *Lock) WriteStatus(ctx context.Context, s Status) error {
	if !l.canary || s.Result != ResultConverged {
		return l.put(ctx, l.s.c.StatusKey(l.s.c.node), s)
	}
	status, err := json.Marshal(s)
	if err != nil {
		return err
	}
	canary, err := json.Marshal(Canary{Node: s.Node, Revision: s.Revision})
	if err != nil {
		return err
	}
	resp, err := l.s.c.client.Txn(ctx).If(l.isOwner()).Then(
		clientv3.OpPut(l.s.c.StatusKey(l.s.c.node), string(status)),
		clientv3.OpPut(l.s.c.CanaryKey(), string(canary)),
	).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", l.s.c.StatusKey(l.s.c.node), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("write %s: %w", l.s.c.StatusKey(l.s.c.node), ErrLockLost)
	}
	return nil
}

// Release unlocks. It uses its own short timeout so that it works during
// shutdown.
func (l *Lock) Release() error {
	if l.stopWatch != nil {
		l.stopWatch()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.s.c.client.Txn(ctx).If(l.isOwner()).Then(clientv3.OpDelete(l.key)).Commit(); err != nil {
		return fmt.Errorf("unlock %s: %w", l.key, err)
	}
	return nil
}
