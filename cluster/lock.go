package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Session is a node's lease, kept alive until Close or until etcd cannot be
// reached for its TTL. The node's presence key lives on it, and so does its
// one mutex on the cluster lock.
type Session struct {
	c       *Cluster
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// NewSession grants a lease of ttl (rounded up to seconds, at least 1) and
// writes the node's presence on it, with its labels.
func (c *Cluster) NewSession(ctx context.Context, ttl time.Duration, labels map[string]string) (*Session, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	// Grant under ctx, so an unreachable etcd does not block forever, but
	// keep the lease alive independently of ctx: a shutdown finishes its
	// step and releases the lock explicitly.
	lease, err := c.client.Grant(ctx, max(1, secs))
	if err != nil {
		return nil, fmt.Errorf("lock session: %w", err)
	}
	session, err := concurrency.NewSession(c.client, concurrency.WithLease(lease.ID))
	if err != nil {
		return nil, fmt.Errorf("lock session: %w", err)
	}
	s := &Session{c: c, session: session, mutex: concurrency.NewMutex(session, c.LockPrefix())}
	if err := s.announce(ctx, labels); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// announce writes the node's presence on the session lease.
func (s *Session) announce(ctx context.Context, labels map[string]string) error {
	p := Presence{Node: s.c.node, Labels: labels, Lease: fmt.Sprintf("%x", s.session.Lease()), Since: time.Now().UTC()}
	raw, _ := json.Marshal(p)
	key := s.c.AliveKey(s.c.node)
	if _, err := s.c.client.Put(ctx, key, string(raw), clientv3.WithLease(s.session.Lease())); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

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
	go func() {
		select {
		case <-s.session.Done():
			cancel(ErrLockLost)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// Close revokes the lease, which also removes the presence key and any
// lock key of the session.
func (s *Session) Close() {
	_ = s.session.Close()
}

// Lock is the held cluster lock.
type Lock struct {
	s *Session
	// ownSession: Release also closes the session (Acquire made it).
	ownSession bool
}

// Lock waits for the cluster lock.
func (s *Session) Lock(ctx context.Context) (*Lock, error) {
	if err := s.mutex.Lock(ctx); err != nil {
		return nil, fmt.Errorf("lock %s: %w", s.c.LockPrefix(), err)
	}
	return &Lock{s: s}, nil
}

// Acquire opens a session and waits for the lock on it: the one-shot form
// for ccm apply --once. Release closes the session too.
func (c *Cluster) Acquire(ctx context.Context, ttl time.Duration, labels map[string]string) (*Lock, error) {
	s, err := c.NewSession(ctx, ttl, labels)
	if err != nil {
		return nil, err
	}
	l, err := s.Lock(ctx)
	if err != nil {
		s.Close()
		return nil, err
	}
	l.ownSession = true
	return l, nil
}

// Context returns a context cancelled with ErrLockLost when the session
// holding the lock is lost. A run passes it down so that it stops before
// the next configuration.
func (l *Lock) Context(parent context.Context) (context.Context, context.CancelFunc) {
	return l.s.Context(parent)
}

// put writes key under the lock, in a transaction guarded by ownership.
func (l *Lock) put(ctx context.Context, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	resp, err := l.s.c.client.Txn(ctx).If(l.s.mutex.IsOwner()).Then(clientv3.OpPut(key, string(raw))).Commit()
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
func (l *Lock) WriteStatus(ctx context.Context, s Status) error {
	return l.put(ctx, l.s.c.StatusKey(l.s.c.node), s)
}

// Release unlocks (and, after Acquire, ends the session). It uses its own
// short timeout so that it works during shutdown.
func (l *Lock) Release() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := l.s.mutex.Unlock(ctx)
	if l.ownSession {
		l.s.Close()
	}
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.s.c.LockPrefix(), err)
	}
	return nil
}
