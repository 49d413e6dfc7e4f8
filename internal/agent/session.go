package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/follow"
)

// Timeouts of the agent's requests to etcd, named once.
const (
	// sessionTimeout bounds the opening of a session (revoke the old
	// lease, grant, announce).
	sessionTimeout = 10 * time.Second
	// announceTimeout bounds one write of the presence.
	announceTimeout = 5 * time.Second
	// syncTimeout bounds the wait for the mirror to catch up with etcd
	// after the lock is taken.
	syncTimeout = 5 * time.Second
	// lagTimeout bounds the measurement of the watch lag.
	lagTimeout = 2 * time.Second
	// problemTimeout bounds one write of the node's problem record.
	problemTimeout = 5 * time.Second
)

// sessions is the one owner of the node's session: its lease, its
// presence on the lease, and the announcements. The run loop, the
// actions and keep ask it for the live session; it opens one at a
// time.
type sessions struct {
	a        *Agent
	mu       sync.Mutex                      // held while a session is opened
	current  atomic.Pointer[cluster.Session] // the live session, if any
	lastErr  atomic.Pointer[string]          // why the last opening failed
	once     sync.Once
	announce chan struct{} // closed once the node is first announced
}

func newSessions(a *Agent) *sessions {
	return &sessions{a: a, announce: make(chan struct{})}
}

// announced is closed once the node was first announced.
func (ss *sessions) announced() <-chan struct{} { return ss.announce }

// live returns the live session, or nil.
func (ss *sessions) live() *cluster.Session {
	if s := ss.current.Load(); s != nil && !s.Lost() {
		return s
	}
	return nil
}

// err is why there is no live session ("" when there is one).
func (ss *sessions) err() string {
	if ss.live() != nil {
		return ""
	}
	if p := ss.lastErr.Load(); p != nil {
		return *p
	}
	return "not opened yet"
}

// ensure returns the live session, opening one (lease, presence) if there
// is none. The lease of a session a crash left behind is revoked first,
// so that a restarted holder does not wait for its own lock; a presence
// of this agent's own earlier session is taken over (see
// cluster.Session.Announce).
func (ss *sessions) ensure(ctx context.Context) (*cluster.Session, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s := ss.live(); s != nil {
		return s, nil
	}
	ss.drop()
	a := ss.a
	sctx, cancel := context.WithTimeout(ctx, sessionTimeout)
	defer cancel()
	p := a.presence.value()
	s, err := a.cluster.NewSession(sctx, cluster.SessionOptions{TTL: a.opts.LockTTL, Presence: &p, LeaseFile: a.leaseFile()})
	if err != nil {
		msg := "open session: " + err.Error()
		ss.lastErr.Store(&msg)
		return nil, err
	}
	ss.current.Store(s)
	a.presence.wake()
	ss.once.Do(func() { close(ss.announce) })
	return s, nil
}

// drop closes the session, if any.
func (ss *sessions) drop() {
	if s := ss.current.Swap(nil); s != nil {
		s.Close()
	}
}

// dropLost closes the session if its lease is gone.
func (ss *sessions) dropLost() {
	if s := ss.current.Load(); s != nil && s.Lost() {
		ss.drop()
	}
}

// keep keeps the node announced: it opens a session whenever there is
// none (at start, and once etcd answers again after an outage), and
// announces the presence when it changes and whenever the alive key
// disappears (deleted by hand, or by an old session's revocation). It
// stops the agent if another live agent serves this node.
func (ss *sessions) keep(ctx context.Context) {
	a := ss.a
	delay := follow.Backoff()
	for ctx.Err() == nil {
		s, err := ss.ensure(ctx)
		if errors.Is(err, cluster.ErrNodeTaken) {
			a.stop(err)
			return
		}
		if err != nil {
			a.log.Warn("open session failed; will retry", zap.Error(err), zap.Duration("in", delay.Next()))
			delay.Wait(ctx)
			continue
		}
		delay.Reset()
		ss.follow(ctx, s)
	}
}

// follow announces on a wake or a deletion of the alive key until the
// session is lost.
func (ss *sessions) follow(ctx context.Context, s *cluster.Session) {
	a := ss.a
	sctx, cancel := context.WithCancel(ctx)
	f := follow.New(a.opts.Client, aliveHandler{ss}, follow.Options{
		Name: "alive key", Key: a.cluster.AliveKey(a.opts.Node), ListOptions: []clientv3.OpOption{clientv3.WithKeysOnly()},
		WatchOptions: []clientv3.OpOption{clientv3.WithFilterPut()}, Logger: a.log,
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(sctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			return
		case <-a.presence.changed:
			ss.announceNow(ctx)
		}
	}
}

// aliveHandler announces the node again when its alive key is missing.
type aliveHandler struct{ ss *sessions }

// Reset announces: whatever happened before the watch started.
func (h aliveHandler) Reset(ctx context.Context, _ []*mvccpb.KeyValue, _ int64, _ string) error {
	h.ss.announceNow(ctx)
	return nil
}

// Apply announces again after a deletion.
func (h aliveHandler) Apply(ctx context.Context, resp clientv3.WatchResponse) error {
	if len(resp.Events) > 0 {
		h.ss.a.log.Info("alive key deleted; announcing again")
		h.ss.announceNow(ctx)
	}
	return nil
}

// announceNow writes the presence on the live session.
func (ss *sessions) announceNow(ctx context.Context) {
	s := ss.live()
	if s == nil {
		return // the next session announces itself
	}
	actx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	if err := s.Announce(actx, ss.a.presence.value()); err != nil {
		if errors.Is(err, cluster.ErrNodeTaken) {
			ss.a.stop(err)
		}
		ss.a.log.Warn("announce presence", zap.Error(err))
	}
}

// instanceFile holds the agent's instance ID in the state directory.
const instanceFile = "instance"

// loadInstance reads the instance ID of the state directory, creating it
// at first start. One agent at a time holds the directory (its flock), so
// a presence with this ID on another lease is this agent's own earlier
// session.
func loadInstance(stateDir string) (string, error) {
	path := filepath.Join(stateDir, instanceFile)
	raw, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(raw))) == 32 {
		return strings.TrimSpace(string(raw)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("state: %w", err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("state: %w", err)
	}
	return id, nil
}
