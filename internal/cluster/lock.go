package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ccm-dev/ccm/api"
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
	Presence *api.Presence
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
	// kaDone is closed when the goroutine that follows the keep-alive
	// responses has returned (nil: none was started).
	kaDone chan struct{}
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
	s.kaDone = make(chan struct{})
	go func() {
		defer close(s.kaDone)
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
func (s *Session) Announce(ctx context.Context, p api.Presence) error {
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
		var other api.Presence
		_ = json.Unmarshal(kvs[0].Value, &other)
		if !sameInstance(p, other) {
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
	resp, err = s.c.client.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).Then(put).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if resp.Succeeded {
		return nil
	}
	if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
		// Gone between the two transactions: this session's own lease
		// expired (an agent starved under load), which is no other
		// agent's claim. The caller opens a new session and tries again.
		return fmt.Errorf("write %s: it vanished with this session's lease", key)
	}
	return fmt.Errorf("write %s: %w", key, ErrNodeTaken)
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

// Close stops the keep-alive and waits until the goroutine that follows
// it has returned, then revokes the lease, which also removes the
// presence key and any lock key of the session. Its error is the
// revoke's: nil when the lease is revoked or was gone already.
func (s *Session) Close() error {
	s.abandon()
	if s.kaDone != nil {
		<-s.kaDone // the client closes the channel once the context ends
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if _, err := s.c.client.Revoke(ctx, s.session.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %s: %w", s.Lease(), err)
	}
	return nil
}

// abandon stops renewing the session's lease, which then ends within its
// TTL.
func (s *Session) abandon() {
	if s.stopKA != nil {
		s.stopKA()
	}
	s.session.Orphan()
}

// Lock is a held slot of the cluster lock.
type Lock struct {
	s      *Session
	key    string
	rev    int64        // create revision of key: ownership is key still at rev
	slots  int          // the slots it may share the lock with
	canary bool         // it holds the lock alone as its change's canary
	gate   *Gate        // read with the last check of the queue
	target func() int64 // the change the holder will converge (canary)
	// deleted is set once a watch saw the lock key deleted (by an
	// operator, or anyone); stopWatch ends that watch.
	deleted   atomic.Bool
	stopWatch context.CancelFunc
	// finished is set once Finish released the lock with the status.
	finished atomic.Bool
}

// Lock waits for a slot of the cluster lock. Like etcd's
// concurrency.Mutex, it queues a key on the session's lease,
// LockKey(node, lease), and holds the lock once every key created before
// it is gone, or, with a rollout strategy of N slots, once fewer than N
// are left. Only keys that LockOf counts are in the queue, ordered by
// create revision across every node's keys.
//
// A waiter watches one key, not the queue: the key just before its own,
// until that one holds a slot; then, as the first waiter, the keys before
// it, which are the holders. So a release wakes the first waiter, and a
// holder taking its slot wakes the one waiter behind it: each costs etcd
// O(1) events and reads, however long the queue.
//
// target, when set, returns the change the caller will converge: the
// revision of the newest object event it has seen. With a canary strategy
// it may share the lock only once a node reported that revision (or a
// later one) converged; until then it runs alone, as the canary.
func (s *Session) Lock(ctx context.Context, target func() int64) (*Lock, error) {
	cli := s.c.client
	key := s.c.LockKey(s.c.node, s.Lease())
	l := &Lock{s: s, key: key, target: target}
	// The queue is read in the same request that joins it, and a key that
	// joins an empty queue holds a slot at once (whatever the strategy):
	// it is written with its held_since mark. Without contention the lock
	// is one round trip and one commit.
	lease := clientv3.WithLease(s.session.Lease())
	held, _ := json.Marshal(Held{Since: time.Now().UTC()})
	join := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.c.LockPrefix()), "=", 0).WithPrefix()},
		[]clientv3.Op{clientv3.OpPut(key, string(held), lease)}, []clientv3.Op{clientv3.OpPut(key, "", lease)})
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(append([]clientv3.Op{join}, l.queueReads(queueQuery{})...)...).
		Else(append([]clientv3.Op{clientv3.OpGet(key)}, l.queueReads(queueQuery{})...)...).Commit()
	if err != nil {
		// The join may have landed with its answer lost (a deadline
		// under load): a key left in the queue on a live lease would
		// hold every later waiter, or hold the lock unknown to anyone.
		l.leave(ctx)
		return nil, fmt.Errorf("lock %s: %w", key, err)
	}
	l.rev = resp.Header.Revision
	marked := resp.Succeeded && resp.Responses[0].GetResponseTxn().GetSucceeded()
	if !resp.Succeeded {
		l.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	if err := l.waitPredecessors(ctx, l.decodeQueueReads(resp.Responses[1:], resp.Header.Revision), marked); err != nil {
		l.leave(ctx)
		return nil, fmt.Errorf("lock %s: %w", key, err)
	}
	l.watchKey()
	return l, nil
}

// leave takes a waiter's key out of the queue after a failed Lock, even
// once ctx is done; a key that is not there costs a no-op delete.
func (l *Lock) leave(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = l.s.c.client.Delete(dctx, l.key)
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
	case l.finished.Load():
		return fmt.Errorf("%w: the run finished and released it", ErrLockLost)
	case l.deleted.Load():
		return fmt.Errorf("%w: the lock key %s was deleted", ErrLockLost, l.key)
	case time.Now().After(l.s.Deadline()):
		renewed, ttl := l.s.renewal()
		return fmt.Errorf("%w: the lease may have expired (no keep-alive for %s, TTL %s)", ErrLockLost,
			time.Since(renewed).Round(time.Millisecond), ttl)
	}
	return nil
}

// Held is the value of a lock key whose node holds a slot; a waiting
// key's value is empty.
type Held struct {
	Since time.Time `json:"held_since"`
}

// legacyHeldMark follows the node name in the value of a lock key of the
// layout before per-node keys, whose node holds one of several slots.
const legacyHeldMark = " running"

// Queued is one key of the lock queue that counts (see Keys.LockOf).
type Queued struct {
	// Node queued the key ("" for a legacy key, whose writer only the
	// presence on the same lease can tell).
	Node string `json:"node"`
	Key  string `json:"key"`
	// Lease is the key's lease, as hex.
	Lease string `json:"lease"`
	// Revision is the key's create revision: the queue's order.
	Revision int64 `json:"revision"`
	// Held is set once the node took its slot; Since is when, by its
	// clock (zero for a legacy key).
	Held   bool      `json:"held"`
	Since  time.Time `json:"since,omitzero"`
	Legacy bool      `json:"legacy,omitempty"`
}

// decodeQueue reads the lock queue from a range of LockPrefix, in queue
// order; keys that do not count are left out.
func decodeQueue(k api.Keys, kvs []*mvccpb.KeyValue) []Queued {
	var out []Queued
	for _, kv := range kvs {
		node, legacy, ok := k.LockOf(string(kv.Key), kv.Lease)
		if !ok {
			continue
		}
		q := Queued{Node: node, Key: string(kv.Key), Lease: fmt.Sprintf("%x", kv.Lease), Revision: kv.CreateRevision, Legacy: legacy}
		var h Held
		switch {
		case legacy:
			q.Held = strings.HasSuffix(string(kv.Value), legacyHeldMark)
		case json.Unmarshal(kv.Value, &h) == nil && !h.Since.IsZero():
			q.Held, q.Since = true, h.Since
		}
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b Queued) int { return cmp.Compare(a.Revision, b.Revision) })
	return out
}

// queueQuery is how a queue read asks for the keys queued before this
// one.
type queueQuery struct {
	// maxCreate bounds the keys to those created before it (0: all).
	maxCreate int64
	// known, when set, are the keys before this one that a complete
	// previous read found: those alone are read, since no key created
	// later can come before it. So etcd reads a few keys, not the queue.
	known []Queued
	// all reads the whole prefix; otherwise only its maxPointReads+1
	// newest keys, which is enough to know a waiter's place unless the
	// response says there is more.
	all bool
}

// queueReads are what tells whether this node holds a slot, and what a
// holder checks first: the rollout strategy, this node's own key, the
// failure records, the pause and the canary records, the quarantine
// records and the release pointer (which the run reads at the gate's
// revision: no round trip of their own), then the keys queued before it
// (see queueQuery), in this order.
func (l *Lock) queueReads(q queueQuery) []clientv3.Op {
	c := l.s.c
	ops := []clientv3.Op{
		clientv3.OpGet(c.RolloutKey()),
		clientv3.OpGet(l.key, clientv3.WithKeysOnly()),
		clientv3.OpGet(c.FailuresRange(), clientv3.WithPrefix()),
		clientv3.OpGet(c.PausedKey()),
		clientv3.OpGet(c.CanaryPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.QuarantinePrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.ReleasePointerKey()),
	}
	if q.known != nil {
		for _, k := range q.known {
			ops = append(ops, clientv3.OpGet(k.Key))
		}
		return ops
	}
	queue := []clientv3.OpOption{clientv3.WithPrefix()}
	if !q.all {
		queue = append(queue, append(clientv3.WithLastCreate(), clientv3.WithLimit(maxPointReads+1))...)
	}
	if q.maxCreate > 0 {
		queue = append(queue, clientv3.WithMaxCreateRev(q.maxCreate))
	}
	return append(ops, clientv3.OpGet(c.LockPrefix(), queue...))
}

// maxPointReads is the most keys a queue read asks for one by one, within
// etcd's limit of operations per transaction (MaxTxnOps).
const maxPointReads = 64

// queueState is the responses to queueReads, decoded: the one place that
// knows their order.
type queueState struct {
	rollout  api.Rollout
	ownRev   int64 // the create revision of this node's key (0: gone)
	failures []api.Failure
	pause    *api.Pause
	canary   api.Canary // the newest change a canary converged
	// quarantines and release are the quarantine records and the
	// release pointer's key (nil: none), for the gate.
	quarantines []api.Quarantine
	release     *mvccpb.KeyValue
	queued      []Queued // the keys read of those queued before this one
	complete    bool     // every key before this one was read
	revision    int64    // the revision of the read
}

// decodeQueueReads decodes reads, the responses to queueReads at revision
// rev.
func (l *Lock) decodeQueueReads(reads []*etcdserverpb.ResponseOp, rev int64) queueState {
	c := l.s.c
	st := queueState{
		rollout:  api.DecodeRollout(reads[0].GetResponseRange().Kvs),
		failures: api.DecodeFailures(c.Keys, reads[2].GetResponseRange().Kvs),
		pause:    api.DecodePause(reads[3].GetResponseRange().Kvs),
		canary:   newestCanary(api.DecodeCanaries(c.Keys, reads[4].GetResponseRange().Kvs)),
		complete: true,
		revision: rev,
	}
	if own := reads[1].GetResponseRange().Kvs; len(own) > 0 {
		st.ownRev = own[0].CreateRevision
	}
	st.quarantines = api.DecodeQuarantines(c.Keys, reads[5].GetResponseRange().Kvs)
	if kvs := reads[6].GetResponseRange().Kvs; len(kvs) > 0 {
		st.release = kvs[0]
	}
	var queued []*mvccpb.KeyValue
	for _, r := range reads[7:] { // the queue: one range, or the known keys one by one
		queued = append(queued, r.GetResponseRange().Kvs...)
		st.complete = st.complete && !r.GetResponseRange().More
	}
	st.queued = decodeQueue(c.Keys, queued)
	return st
}

// waitPredecessors returns once fewer lock keys created before l's count
// than the rollout strategy has slots (one: no key before it), and l's
// key still exists; then it marks the key held, unless the join did
// (marked). A change of strategy takes effect at once. st is the first
// read of the queue.
func (l *Lock) waitPredecessors(ctx context.Context, st queueState, marked bool) error {
	c := l.s.c
	ctx, cancel := l.s.Context(ctx)
	defer cancel()
	for {
		if st.ownRev != l.rev {
			return ErrSessionLost
		}
		l.slots, l.canary = l.slotsFor(st.rollout, st.canary)
		preds := []Queued{} // not nil: the next read asks for these keys
		for _, q := range st.queued {
			if q.Revision < l.rev {
				preds = append(preds, q)
			}
		}
		if st.complete && len(preds) < l.slots {
			// A slot: every key before this one was read, with the gate.
			l.gate = &Gate{Pause: st.pause, Revision: st.revision, Quarantines: st.quarantines}
			if st.release != nil {
				l.gate.ReleasePointer, l.gate.ReleaseRevision = st.release.Value, st.release.ModRevision
			}
			if len(st.failures) > 0 {
				l.gate.Failure = &st.failures[0]
			}
			if marked {
				return nil // joined an empty queue, with the mark
			}
			break
		}
		first := len(preds) > 0 && preds[len(preds)-1].Held // it counts every key before it out
		next, wait := queueQuery{maxCreate: l.rev - 1, known: preds}, true
		switch {
		case !st.complete && (len(preds) < l.slots || first):
			// The limit cut the keys before this one short, and deciding
			// needs them all: read them at once, without waiting.
			next, wait = queueQuery{maxCreate: l.rev - 1, all: true}, false
		case !st.complete || len(preds) > maxPointReads:
			// Its place is known (the newest keys before it), not every
			// key: the next read lists the queue again.
			next.known, next.all = nil, first
		}
		if wait {
			if err := l.waitTurn(ctx, preds, st.revision+1); err != nil {
				return lockWaitErr(ctx, err)
			}
		}
		resp, err := c.client.Txn(ctx).Then(l.queueReads(next)...).Commit()
		if err != nil {
			return lockWaitErr(ctx, err)
		}
		st = l.decodeQueueReads(resp.Responses, resp.Header.Revision)
	}
	// In a batch, the mark wakes the waiter behind this key, which then
	// watches for the holders' releases (with one slot that waiter
	// watches for deletions only: see waitTurn); it names the holder and
	// since when in ccm status and ccm lock break. It is fenced, and the
	// key stays on its lease.
	held, _ := json.Marshal(Held{Since: time.Now().UTC()})
	resp, err := c.client.Txn(ctx).If(l.isOwner()).Then(clientv3.OpPut(l.key, string(held), clientv3.WithIgnoreLease())).Commit()
	if err != nil {
		return lockWaitErr(ctx, err)
	}
	if !resp.Succeeded {
		return ErrSessionLost
	}
	return nil
}

// Gate is the failure flag and the pause as read when the lock was had,
// in the same request.
func (l *Lock) Gate() Gate { return *l.gate }

// slotsFor is how many nodes this one may share the lock with under
// strategy r, and whether it is the canary of its change: its batch once a
// canary converged its change (or a later one), one (alone) until then.
func (l *Lock) slotsFor(r api.Rollout, canary api.Canary) (int, bool) {
	if !r.Canary || r.Slots() == 1 || l.target == nil || canary.Revision >= l.target() {
		return r.Slots(), false
	}
	return 1, true
}

// waitTurn returns when, from revision rev, something happened that may
// give this waiter a slot: the strategy changed, or the key just before it
// changed (it took a slot, or left), or, once that one holds a slot,
// enough of the keys before it went (or a canary record arrived that lets
// it share the lock). preds are the counted keys before it, in queue
// order.
func (l *Lock) waitTurn(ctx context.Context, preds []Queued, rev int64) error {
	c := l.s.c
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	watch := func(key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		return c.client.Watch(wctx, key, append(opts, clientv3.WithRev(rev))...)
	}
	last := preds[len(preds)-1]
	// With one slot (the strategy's, not a canary's, which a canary
	// record can widen) only the key before it going can give it the
	// lock: that key's held_since mark would wake it for nothing.
	lastOpts := []clientv3.OpOption{}
	if l.slots == 1 && !l.canary {
		lastOpts = append(lastOpts, clientv3.WithFilterPut())
	}
	// Its own key going ends the session's wait with the session (ccm lock
	// break revokes the lease) or, as the first waiter, with the watch of
	// the keys; a waiter further back finds it gone on its next read. A
	// watch this waiter does not need stays nil, and never answers.
	strategy := watch(c.RolloutKey())
	var keys, canaries clientv3.WatchChan
	var ahead map[string]bool // the first waiter's: keys before it still there
	if !last.Held {
		keys = watch(last.Key, lastOpts...)
	} else {
		ahead = map[string]bool{}
		for _, q := range preds {
			ahead[q.Key] = true
		}
		keys = watch(c.LockPrefix(), clientv3.WithPrefix(), clientv3.WithFilterPut())
		if l.canary {
			canaries = watch(c.CanaryPrefix(), clientv3.WithPrefix(), clientv3.WithFilterDelete())
		}
	}
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-strategy:
		case wr, ok = <-canaries:
		case wr, ok = <-keys:
			if ahead == nil {
				break // the key just before it changed
			}
			if err := watchErr(ctx, wr, ok); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				if string(ev.Kv.Key) == l.key {
					return nil // its own key went: the next read says so
				}
				delete(ahead, string(ev.Kv.Key))
			}
			if len(ahead) < l.slots {
				return nil
			}
			continue
		}
		if err := watchErr(ctx, wr, ok); err != nil || len(wr.Events) > 0 {
			return err
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
func (l *Lock) SetFailure(ctx context.Context, f api.Failure) error {
	return l.put(ctx, l.s.c.FailureKey(l.s.c.node), f)
}

// WriteStatus records this node's last run.
//
// A canary that converged also records its change, in the same
// transaction: the other nodes may then share the lock.
func (l *Lock) WriteStatus(ctx context.Context, s api.Status) error {
	return l.writeStatus(ctx, s)
}

// Finish records this node's last run, as WriteStatus does, and releases
// the lock in the same transaction: the end of a run is one commit, and
// the next node's wake comes with the status it may read. Once it
// succeeded, the holder acts no more (Fence refuses), and Release does
// nothing. If it fails, the lock is still held, and Release releases it.
func (l *Lock) Finish(ctx context.Context, s api.Status) error {
	// The fence's watch ends first: the run acts no more, and the
	// deletion then costs etcd one event (to the waiter behind), not two.
	if l.stopWatch != nil {
		l.stopWatch()
	}
	if err := l.writeStatus(ctx, s, clientv3.OpDelete(l.key)); err != nil {
		return err
	}
	l.finished.Store(true)
	return nil
}

// writeStatus writes the status (and a converged canary's change) and
// more, in one transaction fenced by the lock.
func (l *Lock) writeStatus(ctx context.Context, s api.Status, more ...clientv3.Op) error {
	key := l.s.c.StatusKey(l.s.c.node)
	status, err := json.Marshal(s)
	if err != nil {
		return err
	}
	ops := append([]clientv3.Op{clientv3.OpPut(key, string(status))}, more...)
	if l.canary && s.Result == api.ResultConverged {
		canary, err := json.Marshal(api.Canary{Node: s.Node, Revision: s.Revision})
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(l.s.c.CanaryKey(l.s.c.node), string(canary)))
	}
	resp, err := l.s.c.client.Txn(ctx).If(l.isOwner()).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("write %s: %w", key, ErrLockLost)
	}
	return nil
}

// Release unlocks. It uses its own short timeouts so that it works during
// shutdown, and tries several times (releaseAttempts); if every try
// fails, it abandons the session, so that the lock ends with the lease
// within the TTL instead of being held while the agent runs.
func (l *Lock) Release() error {
	if l.finished.Load() {
		return nil // Finish released it
	}
	if l.stopWatch != nil {
		l.stopWatch()
	}
	var err error
	for attempt := range releaseAttempts {
		if attempt > 0 {
			time.Sleep(releasePause)
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 2*time.Second)
		_, err = l.s.c.client.Txn(ctx).If(l.isOwner()).Then(clientv3.OpDelete(l.key)).Commit()
		cancel()
		if err == nil || l.s.Lost() {
			return nil // deleted, or gone with the lease
		}
	}
	// Still held, and the keep-alives may well reach a member that has a
	// leader: the lock would stay held for as long as the agent runs.
	// Stop renewing, so that the lease and the lock end within the TTL.
	l.s.abandon()
	_, ttl := l.s.renewal()
	return fmt.Errorf("unlock %s: %w (the session is abandoned: the lock ends with its lease, within %s)", l.key, err, ttl)
}

// Release tries releaseAttempts times, releasePause apart. Each try asks
// for a leader (WithRequireLeader), so that a member cut off from the
// others answers at once instead of at the timeout, and the client sends
// the next try to the next endpoint: a node that reaches all members but
// whose connection landed on the cut-off one still releases. Before, the
// one try went to that member, timed out, and the lock stayed held while
// the keep-alives, sent elsewhere, kept the lease alive: every other node
// waited for as long as the partition lasted (test/nodes:
// NodeWithTheMinority).
const (
	releaseAttempts = 5
	releasePause    = 200 * time.Millisecond
)

// Queued returns node's keys in the lock queue, as ccm status shows them
// (a legacy key is node's when node's presence is on its lease).
func (c *Cluster) Queued(ctx context.Context, node string) ([]Queued, error) {
	v, err := c.View(ctx)
	if err != nil {
		return nil, err
	}
	var out []Queued
	for _, q := range v.Queue {
		if q.Node == node {
			out = append(out, q)
		}
	}
	return out, nil
}

// BreakLock evicts the holders or waiters of keys (from Queued): it
// deletes each key that is still the one queued, and revokes its lease.
// The node's agent then finds its session lost: a run under way stops
// before its next rename or command (see Lock.Fence), and the agent
// queues again on a new session. It returns how many keys it deleted.
func (c *Cluster) BreakLock(ctx context.Context, keys []Queued) (int, error) {
	broken := 0
	for _, q := range keys {
		resp, err := c.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(q.Key), "=", q.Revision)).
			Then(clientv3.OpDelete(q.Key)).Commit()
		if err != nil {
			return broken, fmt.Errorf("delete %s: %w", q.Key, err)
		}
		if !resp.Succeeded {
			continue // released meanwhile
		}
		broken++
		id, err := strconv.ParseInt(q.Lease, 16, 64)
		if err != nil {
			continue
		}
		if _, err := c.client.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return broken, fmt.Errorf("revoke lease %s of %s: %w", q.Lease, q.Key, err)
		}
	}
	return broken, nil
}
