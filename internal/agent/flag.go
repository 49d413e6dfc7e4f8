package agent

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/follow"
)

// flagState is what this node knows of keys that stop the rollout while
// any exists: the failure records, or the pause.
type flagState struct {
	gauge   prometheus.Gauge // 1 while set
	onClear func()
	// counts tells the keys that set the flag from others in the range
	// followed; keys are those the watch saw last.
	counts func(key string) bool
	keys   map[string]bool

	mu      sync.Mutex
	set     bool
	rev     int64         // the etcd revision the state was seen at
	cleared chan struct{} // closed and replaced when the flag clears
	raised  chan struct{} // closed and replaced when the flag is set
}

func newFlagState(gauge prometheus.Gauge, counts func(key string) bool, onClear func()) *flagState {
	return &flagState{gauge: gauge, onClear: onClear, counts: counts, keys: map[string]bool{},
		cleared: make(chan struct{}), raised: make(chan struct{})}
}

// raisedCh is closed when the flag is next set.
func (f *flagState) raisedCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.raised
}

// observe records the flag's state as seen at etcd revision rev; an
// observation older than one already recorded is ignored, so that a run
// that saw the flag cannot undo the watch's later news of its clearing. A
// set -> clear transition asks for a converge of everything.
func (f *flagState) observe(set bool, rev int64) {
	f.mu.Lock()
	if rev < f.rev {
		f.mu.Unlock()
		return
	}
	f.rev = rev
	wasSet := f.set
	f.set = set
	if wasSet && !set {
		close(f.cleared)
		f.cleared = make(chan struct{})
	}
	if !wasSet && set {
		close(f.raised)
		f.raised = make(chan struct{})
	}
	f.mu.Unlock()
	if set {
		f.gauge.Set(1)
	} else {
		f.gauge.Set(0)
	}
	if wasSet && !set {
		f.onClear()
	}
}

// isClear reports whether the flag is clear.
func (f *flagState) isClear() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.set
}

// waitClear blocks while the flag is set.
func (f *flagState) waitClear(ctx context.Context) error {
	for {
		f.mu.Lock()
		set, ch := f.set, f.cleared
		f.mu.Unlock()
		if !set {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// watchFlag follows the failure records (and the legacy flag).
func (a *Agent) watchFlag(ctx context.Context) {
	a.follow(ctx, follow.Options{Name: a.cluster.FailuresRange(), Key: a.cluster.FailuresRange(), Prefix: true}, a.flag)
}

// watchPause follows <prefix>/paused.
func (a *Agent) watchPause(ctx context.Context) {
	a.follow(ctx, follow.Options{Name: a.cluster.PausedKey(), Key: a.cluster.PausedKey()}, a.pause)
}

// follow keeps state in step with what opts follows.
func (a *Agent) follow(ctx context.Context, opts follow.Options, state *flagState) {
	opts.Logger = a.log
	follow.New(a.opts.Client, state, opts).Run(ctx)
}

// Reset records which keys that set the flag exist at rev.
func (f *flagState) Reset(_ context.Context, kvs []*mvccpb.KeyValue, rev int64, _ string) error {
	f.mu.Lock()
	clear(f.keys)
	for _, kv := range kvs {
		f.track(string(kv.Key), true)
	}
	set := len(f.keys) > 0
	f.mu.Unlock()
	f.observe(set, rev)
	return nil
}

// Apply records each put and delete of those keys. The keys follow every
// event in order; the flag's state only events newer than what it holds.
func (f *flagState) Apply(_ context.Context, resp clientv3.WatchResponse) error {
	for _, ev := range resp.Events {
		f.mu.Lock()
		f.track(string(ev.Kv.Key), ev.Type == clientv3.EventTypePut)
		set := len(f.keys) > 0
		f.mu.Unlock()
		f.observe(set, ev.Kv.ModRevision)
	}
	return nil
}

// track records that key exists or not; f.mu is held.
func (f *flagState) track(key string, exists bool) {
	switch {
	case !f.counts(key):
	case exists:
		f.keys[key] = true
	default:
		delete(f.keys, key)
	}
}
