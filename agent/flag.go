package agent

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/metrics"
	"github.com/ccm-dev/ccm/retry"
)

// flagState is what this node knows of the failure flag.
type flagState struct {
	metrics *metrics.Metrics
	onClear func()

	mu      sync.Mutex
	set     bool
	rev     int64         // the etcd revision the state was seen at
	cleared chan struct{} // closed and replaced when the flag clears
}

func newFlagState(m *metrics.Metrics, onClear func()) *flagState {
	return &flagState{metrics: m, onClear: onClear, cleared: make(chan struct{})}
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
	f.mu.Unlock()
	if set {
		f.metrics.Halted.Set(1)
	} else {
		f.metrics.Halted.Set(0)
	}
	if wasSet && !set {
		f.onClear()
	}
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

// watchFlag follows <prefix>/failure: read it, then watch from the next
// revision; on any error, read again.
func (a *Agent) watchFlag(ctx context.Context) {
	key := a.cluster.FailureKey()
	delay := retry.New(10 * time.Second)
	for ctx.Err() == nil {
		resp, err := a.opts.Client.Get(ctx, key)
		if err != nil {
			a.log.Warn("read failure flag", zap.Error(err))
			delay.Wait(ctx)
			continue
		}
		a.flag.observe(len(resp.Kvs) > 0, resp.Header.Revision)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wresp := range a.opts.Client.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
			if wresp.Err() != nil {
				a.log.Warn("failure flag watch", zap.Error(wresp.Err()))
				break
			}
			delay.Reset()
			for _, ev := range wresp.Events {
				a.flag.observe(ev.Type == clientv3.EventTypePut, ev.Kv.ModRevision)
			}
		}
		cancel()
		delay.Wait(ctx)
	}
}
