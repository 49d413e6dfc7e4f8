// Package retry paces attempts against an unreachable etcd: a jittered
// exponential delay (cenkalti/backoff) that a context can interrupt.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Initial is the first delay.
const Initial = 100 * time.Millisecond

// Delay is a growing delay between attempts. Not safe for concurrent use.
type Delay struct {
	b    *backoff.ExponentialBackOff
	next time.Duration
}

// New returns a Delay from Initial up to ceiling.
func New(ceiling time.Duration) *Delay {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = Initial, ceiling
	b.Reset()
	return &Delay{b: b, next: b.NextBackOff()}
}

// Next returns the delay the next Wait sleeps.
func (d *Delay) Next() time.Duration { return d.next }

// Reset starts again from Initial, after a success.
func (d *Delay) Reset() {
	d.b.Reset()
	d.next = d.b.NextBackOff()
}

// Wait sleeps for the current delay and lengthens the next one. It returns
// false if ctx ended first.
func (d *Delay) Wait(ctx context.Context) bool {
	t := time.NewTimer(d.next)
	defer t.Stop()
	d.next = d.b.NextBackOff()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
