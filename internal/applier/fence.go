package applier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrFenced is returned when the run's fence refused a step: the node no
// longer holds the cluster lock, so another node may run. The step did
// not happen; what the run had renamed is restored.
var ErrFenced = errors.New("stopped before the next step: the cluster lock is no longer held")

type fenceKey struct{}

// WithFence returns a context whose runs call fence immediately before
// each rename and each command (validate, on_change): a non-nil error
// stops the run there. The rollout passes the lock's Fence.
func WithFence(ctx context.Context, fence func() error) context.Context {
	return context.WithValue(ctx, fenceKey{}, fence)
}

// fenced is nil while ctx's fence (if any) lets the run go on, and
// ErrFenced with its cause otherwise.
func fenced(ctx context.Context, step string) error {
	fence, _ := ctx.Value(fenceKey{}).(func() error)
	if fence == nil {
		return nil
	}
	if err := fence(); err != nil {
		return fmt.Errorf("%w: before %s: %w", ErrFenced, step, err)
	}
	return nil
}

// fencePoll is how often a running command's fence is asked: Fence makes
// no round trip, and the lease's fence margin (a fifth of the TTL, at
// least 500 ms) is far longer.
const fencePoll = 100 * time.Millisecond

// whileFenced returns a context that is cancelled with ErrFenced as soon as
// ctx's fence refuses while a command runs, so that the command (its
// process group) is killed before another node may hold the lock: a
// holder cut off from etcd in the middle of its on_change must not run it
// on beside the next holder. stop ends the watch.
func whileFenced(ctx context.Context, step string) (_ context.Context, stop func()) {
	fence, _ := ctx.Value(fenceKey{}).(func() error)
	if fence == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(fencePoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if err := fence(); err != nil {
					cancel(fmt.Errorf("%w: during %s: %w", ErrFenced, step, err))
					return
				}
			}
		}
	}()
	return ctx, func() { close(done); wg.Wait(); cancel(nil) }
}
