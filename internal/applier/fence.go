package applier

import (
	"context"
	"errors"
	"fmt"
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
