package agent

import (
	"context"
	"errors"
	"maps"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/retry"
)

// presence is what the node announces in its alive key: its labels, and
// the first change that concerns it and that it has not converged, so that
// ccm status can tell it is behind.
type presence struct {
	mu      sync.Mutex
	current cluster.Presence
	upTo    int64         // the last converged revision
	changed chan struct{} // a new value to announce
}

func newPresence(labels map[string]string) *presence {
	host, _ := os.Hostname()
	return &presence{current: cluster.Presence{Labels: maps.Clone(labels), Since: time.Now().UTC(), Host: host}, changed: make(chan struct{}, 1)}
}

func (p *presence) value() cluster.Presence {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// setActionKey publishes the node's public key for secret parameters.
func (p *presence) setActionKey(key string) {
	p.mu.Lock()
	p.current.ActionKey = key
	p.mu.Unlock()
}

// wake asks keepPresence to announce the current value.
func (p *presence) wake() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// changedAt records a change at rev that concerns the node. Only the first
// one since the node was last up to date is announced: one write per
// rollout, not one per event.
func (p *presence) changedAt(rev int64) {
	p.mu.Lock()
	behind := p.current.Pending > p.upTo
	if !behind {
		p.current.Pending = rev
	}
	p.mu.Unlock()
	if !behind {
		p.wake()
	}
}

// converged records the last converged revision.
func (p *presence) converged(rev int64) {
	p.mu.Lock()
	p.upTo = max(p.upTo, rev)
	p.mu.Unlock()
}

// events is the watcher's sink: the debouncer, plus the pending revision
// of changes that concern this node.
type events Agent

// Add records that types changed at rev.
func (e *events) Add(rev int64, types ...string) {
	a := (*Agent)(e)
	a.deb.Add(types...)
	a.metrics.DebouncePending.Set(float64(a.deb.Pending()))
	sel := a.selection.Load()
	if names, err := a.applier.Select(sel.set, sel.bus.Publish(types...)); err == nil && len(names) > 0 {
		a.presence.changedAt(rev)
	}
}

// AddAll asks for a converge of everything.
func (e *events) AddAll(reason string) { (*Agent)(e).deb.AddAll(reason) }

// keepPresence keeps the node announced: it opens a session whenever there
// is none (at start, and once etcd answers again after an outage), and
// announces the presence when it changes and whenever the alive key
// disappears (deleted by hand, or by an old session's revocation). It
// stops the agent if another live agent serves this node.
func (a *Agent) keepPresence(ctx context.Context) {
	delay := retry.New(10 * time.Second)
	for ctx.Err() == nil {
		s, err := a.ensureSession(ctx)
		if errors.Is(err, cluster.ErrNodeTaken) {
			a.stop(err)
			return
		}
		if err != nil {
			a.log.Warn("open session failed; will retry", zap.Error(err), zap.Duration("in", delay.Next()))
			delay.Wait(ctx)
			continue
		}
		a.followPresence(ctx, s, delay)
	}
}

// followPresence announces on a wake or a deletion until the session is
// lost or the watch ends.
func (a *Agent) followPresence(ctx context.Context, s *cluster.Session, delay *retry.Delay) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := a.opts.Client.Watch(wctx, a.cluster.AliveKey(a.opts.Node), clientv3.WithFilterPut())
	a.announce(ctx) // whatever happened before the watch started
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			return
		case <-a.presence.changed:
			a.announce(ctx)
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				delay.Wait(ctx)
				return
			}
			delay.Reset()
			if len(wr.Events) > 0 {
				a.log.Info("alive key deleted; announcing again")
				a.announce(ctx)
			}
		}
	}
}

func (a *Agent) announce(ctx context.Context) {
	s := a.session.Load()
	if s == nil || s.Lost() {
		return // the next session announces itself
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Announce(actx, a.presence.value()); err != nil {
		a.log.Warn("announce presence", zap.Error(err))
	}
}
