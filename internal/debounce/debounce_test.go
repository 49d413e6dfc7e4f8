package debounce_test

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/debounce"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// next runs Next in the background and returns a channel for its batch.
func next(t *testing.T, d *debounce.Debouncer) <-chan debounce.Batch {
	ch := make(chan debounce.Batch, 1)
	go func() {
		b, err := d.Next(context.Background())
		if err == nil {
			ch <- b
		}
	}()
	return ch
}

func requireNone(t *testing.T, ch <-chan debounce.Batch) {
	t.Helper()
	select {
	case b := <-ch:
		t.Fatalf("batch released early: %+v", b)
	default:
	}
}

// waitTimer waits until Next sleeps on the fake clock.
func waitTimer(t *testing.T, fc *clockwork.FakeClock) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, fc.BlockUntilContext(ctx, 1))
}

// stepUntil advances the fake clock a second at a time until a batch is
// released. Next may arm its timer just after an Advance on a loaded
// machine, which pushes its deadline by that Advance: one exact step
// would then never fire.
func stepUntil(t *testing.T, fc *clockwork.FakeClock, ch <-chan debounce.Batch) debounce.Batch {
	t.Helper()
	for i := 0; i < 30; i++ {
		waitTimer(t, fc)
		fc.Advance(time.Second)
		select {
		case b := <-ch:
			return b
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("never released")
	return debounce.Batch{}
}

func TestBurstIsOneBatchAfterTheQuietPeriod(t *testing.T) {
	fc := clockwork.NewFakeClock()
	d := debounce.New(10*time.Second, time.Minute, fc)
	ch := next(t, d)
	for i := 1; i <= 100; i++ {
		d.Add("sites")
		if i%10 == 0 {
			d.Add("users")
		}
	}
	waitTimer(t, fc)
	fc.Advance(9 * time.Second)
	requireNone(t, ch)
	b := stepUntil(t, fc, ch)
	assert.Equal(t, []string{"sites", "users"}, b.Types)
	assert.False(t, (b.Kind == runkind.Full))
	assert.Zero(t, d.Pending())
}

func TestEachEventRestartsTheQuietPeriod(t *testing.T) {
	fc := clockwork.NewFakeClock()
	d := debounce.New(10*time.Second, time.Minute, fc)
	ch := next(t, d)
	d.Add("a")
	waitTimer(t, fc)
	fc.Advance(8 * time.Second)
	d.Add("b") // restarts the 10s
	waitTimer(t, fc)
	fc.Advance(8 * time.Second)
	requireNone(t, ch) // 16 s after a: the quiet period did restart
	assert.Equal(t, []string{"a", "b"}, stepUntil(t, fc, ch).Types)
}

func TestChurnIsReleasedAtTheCeiling(t *testing.T) {
	fc := clockwork.NewFakeClock()
	d := debounce.New(10*time.Second, 60*time.Second, fc)
	ch := next(t, d)
	start := fc.Now()
	for {
		d.Add("sites")
		waitTimer(t, fc)
		fc.Advance(5 * time.Second) // always inside the quiet period
		if fc.Since(start) < 60*time.Second {
			requireNone(t, ch)
			continue
		}
		// At max-wait: wait for the release itself, however slow the
		// machine, instead of stepping past it.
		select {
		case <-ch:
			assert.Equal(t, 60*time.Second, fc.Since(start), "released at max-wait after the first event")
			return
		case <-time.After(10 * time.Second):
			t.Fatal("not released at max-wait")
		}
	}
}

func TestEventsDuringARunAreKeptForTheNextBatch(t *testing.T) {
	fc := clockwork.NewFakeClock()
	d := debounce.New(0, 0, fc)
	d.Add("a")
	b, err := d.Next(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, b.Types)

	// The run is under way; events keep arriving.
	d.Add("b")
	d.AddAll("resync")
	assert.Equal(t, 2, d.Pending())
	b, err = d.Next(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, b.Types)
	assert.True(t, (b.Kind == runkind.Full))
	assert.Equal(t, []string{"resync"}, b.Reasons)
}

func TestRequeueKeepsEverything(t *testing.T) {
	d := debounce.New(0, 0, nil)
	d.Requeue(debounce.Batch{Types: []string{"x"}, Kind: runkind.Full, Reasons: []string{"start"}})
	d.Add("y")
	b, err := d.Next(context.Background())
	require.NoError(t, err)
	assert.Equal(t, debounce.Batch{Types: []string{"x", "y"}, Kind: runkind.Full, Reasons: []string{"start"}}, b)
}

func TestNextReturnsOnCancel(t *testing.T) {
	d := debounce.New(time.Hour, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	d.Add("a")
	errc := make(chan error)
	go func() { _, err := d.Next(ctx); errc <- err }()
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	assert.Equal(t, 1, d.Pending(), "cancelling loses nothing")

	due := debounce.New(0, 0, nil)
	due.Add("a")
	_, err := due.Next(ctx)
	assert.ErrorIs(t, err, context.Canceled, "a due batch is not handed out after cancel")
}

func TestAFullRunIsReleasedAtOnce(t *testing.T) {
	fc := clockwork.NewFakeClock()
	d := debounce.New(10*time.Second, time.Minute, fc)
	d.Add("sites")
	d.AddAll("resync")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := d.Next(ctx) // the fake clock never moves
	require.NoError(t, err)
	assert.True(t, (b.Kind == runkind.Full), "start, resume, reload and resync do not wait for the quiet period")
	assert.Equal(t, []string{"sites"}, b.Types, "pending events ride along")
}
