package retry_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/internal/retry"
)

func TestDelayGrowsToTheCeilingAndResets(t *testing.T) {
	d := retry.New(time.Second)
	first := d.Next()
	assert.InDelta(t, float64(retry.Initial), float64(first), float64(retry.Initial)/2+1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 20; i++ {
		assert.False(t, d.Wait(ctx), "a cancelled context interrupts the wait")
	}
	assert.LessOrEqual(t, d.Next(), time.Second+time.Second/2, "capped (with jitter)")
	assert.Greater(t, d.Next(), 400*time.Millisecond)
	d.Reset()
	assert.Less(t, d.Next(), 200*time.Millisecond)
}
