package agent

import (
	"maps"
	"os"
	"sync"
	"time"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/debounce"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// presence is what the node announces in its alive key: its labels, and
// the first change that concerns it and that it has not converged, so that
// ccm status can tell it is behind.
type presence struct {
	mu      sync.Mutex
	current api.Presence
	upTo    int64         // the last converged revision
	changed chan struct{} // a new value to announce
}

func newPresence(labels map[string]string) *presence {
	host, _ := os.Hostname()
	return &presence{current: api.Presence{Labels: maps.Clone(labels), Since: time.Now().UTC(), Host: host}, changed: make(chan struct{}, 1)}
}

func (p *presence) value() api.Presence {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// setInstance records the agent's instance ID.
func (p *presence) setInstance(id string) {
	p.mu.Lock()
	p.current.Instance = id
	p.mu.Unlock()
}

// setActionKey publishes the node's public key for secret parameters.
func (p *presence) setActionKey(key string) {
	p.mu.Lock()
	p.current.ActionKey = key
	p.mu.Unlock()
}

// reloaded records how the last load of a configuration ended (nil: it
// succeeded), and announces a change.
func (p *presence) reloaded(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	p.mu.Lock()
	changed := p.current.ReloadError != msg
	p.current.ReloadError = msg
	p.mu.Unlock()
	if changed {
		p.wake()
	}
}

// releaseStored records why the copy in etcd of the loaded release
// cannot be used (nil: it can), and announces a change.
func (p *presence) releaseStored(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	p.mu.Lock()
	changed := p.current.ReleaseStoredError != msg
	p.current.ReleaseStoredError = msg
	p.mu.Unlock()
	if changed {
		p.wake()
	}
}

// setRelease announces the release the agent has loaded.
func (p *presence) setRelease(id string) {
	p.mu.Lock()
	p.current.Release = id
	p.mu.Unlock()
	p.wake()
}

// wake asks the session owner (sessions.keep) to announce the current value.
func (p *presence) wake() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// changedAt records a change at rev that concerns the node. Only the first
// one since the node was last up to date is announced: one write per
// rollout, not one per event; and only if the node has not converged it
// pendingGrace later, so that a change the node converges at once costs
// no write of the presence (the status says it converged).
func (p *presence) changedAt(rev int64) {
	p.mu.Lock()
	behind := p.current.Pending > p.upTo
	if !behind {
		p.current.Pending = rev
	}
	p.mu.Unlock()
	if !behind {
		// The timer's function only signals the session owner, which
		// announces; it needs no stop: a late signal finds nothing to do.
		time.AfterFunc(pendingGrace, func() { p.wakeIfBehind(rev) })
	}
}

// pendingGrace is how long a change may stay unconverged before the node
// announces it is behind: ccm status shows a node waiting for the lock,
// paused or debouncing as behind this much later.
const pendingGrace = time.Second

// wakeIfBehind announces the presence if the change at rev is still not
// converged. A later change the node is behind on is not this timer's: it
// came when the node was up to date (changedAt), and has its own grace.
// This timer had announced it, a write of the presence for a change a few
// milliseconds old, whenever a busy node took more than the grace for a
// stream of changes it converged one by one.
func (p *presence) wakeIfBehind(rev int64) {
	p.mu.Lock()
	behind := p.upTo < rev
	p.mu.Unlock()
	if behind {
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
	// The same selection a run of these changes makes (names): a change
	// concerns the node when that run would converge something.
	if names, err := a.names(sel, debounce.Batch{Types: types, Kind: runkind.Changed}); err == nil && len(names) > 0 {
		a.presence.changedAt(rev)
	}
}

// AddAll asks for a converge of everything.
func (e *events) AddAll(reason string) { (*Agent)(e).deb.AddAll(reason) }
