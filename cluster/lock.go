package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lock is the held cluster lock: a session (lease) and its mutex.
type Lock struct {
	c       *Cluster
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// Acquire waits for the cluster lock. The session's lease has ttl (rounded
// up to seconds, at least 1) and is kept alive until Release. The node's
// presence is attached to the same lease.
func (c *Cluster) Acquire(ctx context.Context, ttl time.Duration, labels map[string]string) (*Lock, error) {
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
	l := &Lock{c: c, session: session, mutex: concurrency.NewMutex(session, c.LockPrefix())}
	if err := l.announce(ctx, labels); err != nil {
		l.close()
		return nil, err
	}
	if err := l.mutex.Lock(ctx); err != nil {
		l.close()
		return nil, fmt.Errorf("lock %s: %w", c.LockPrefix(), err)
	}
	return l, nil
}

// announce writes the node's presence on the session lease.
func (l *Lock) announce(ctx context.Context, labels map[string]string) error {
	p := Presence{Node: l.c.node, Labels: labels, Lease: fmt.Sprintf("%x", l.session.Lease()), Since: time.Now().UTC()}
	raw, _ := json.Marshal(p)
	key := l.c.AliveKey(l.c.node)
	if _, err := l.c.client.Put(ctx, key, string(raw), clientv3.WithLease(l.session.Lease())); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// Context returns a context that is cancelled when parent is or when the
// session is lost (lease expired, etcd unreachable past the TTL). A run
// passes it down so that it stops before the next configuration.
func (l *Lock) Context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	go func() {
		select {
		case <-l.session.Done():
			cancel(ErrLockLost)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// put writes key under the lock, in a transaction guarded by ownership.
func (l *Lock) put(ctx context.Context, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	resp, err := l.c.client.Txn(ctx).If(l.mutex.IsOwner()).Then(clientv3.OpPut(key, string(raw))).Commit()
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
	return l.put(ctx, l.c.FailureKey(), f)
}

// WriteStatus records this node's last run.
func (l *Lock) WriteStatus(ctx context.Context, s Status) error {
	return l.put(ctx, l.c.StatusKey(l.c.node), s)
}

// Release unlocks and ends the session, which also removes the presence
// key. It uses its own short timeout so that it works during shutdown.
func (l *Lock) Release() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := l.mutex.Unlock(ctx)
	l.close()
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.c.LockPrefix(), err)
	}
	return nil
}

func (l *Lock) close() {
	_ = l.session.Close() // revokes the lease
}
