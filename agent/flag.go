package agent

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/follow"
)

// flagState is what this node knows of a key that stops the rollout while
// it exists: the failure flag, or the pause.
type flagState struct {
	gauge   prometheus.Gauge // 1 while set
	onClear func()

	mu      sync.Mutex
	set     bool
	rev     int64         // the etcd revision the state was seen at
	cleared chan struct{} // closed and replaced when the flag clears
	raised  chan struct{} // closed and replaced when the flag is set
}

func newFlagState(gauge prometheus.Gauge, onClear func()) *flagState {
	return &flagState{gauge: gauge, onClear: onClear, cleared: make(chan struct{}), raised: make(chan struct{})}
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

// watchFlag follows <prefix>/failure.
func (a *Agent) watchFlag(ctx context.Context) { a.follow(ctx, a.cluster.FailureKey(), a.flag) }

// watchPause follows <prefix>/paused.
func (a *Agent) watchPause(ctx context.Context) { a.follow(ctx, a.cluster.PausedKey(), a.pause) }

// follow keeps state in step with key.
func (a *Agent) follow(ctx context.Context, key string, state *flagState) {
	follow.New(a.opts.Client, state, follow.Options{Name: key, Key: key, Logger: a.log}).Run(ctx)
}

// Reset records whether the key exists at rev.
func (f *flagState) Reset(_ context.Context, kvs []*mvccpb.KeyValue, rev int64, _ string) error {
	f.observe(len(kvs) > 0, rev)
	return nil
}

// Apply records each put and delete of the key.
func (f *flagState) Apply(_ context.Context, resp clientv3.WatchResponse) error {
	for _, ev := range resp.Events {
		f.observe(ev.Type == clientv3.EventTypePut, ev.Kv.ModRevision)
	}
	return nil
}
