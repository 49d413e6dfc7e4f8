package render_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// A loop of bounded calls, each within its limit, is bounded by the
// render's meter: the configuration fails with an error, the agent lives.
func TestALoopOfBoundedCallsIsBoundedByTheRendersMeter(t *testing.T) {
	old := render.MaxRenderAlloc
	render.MaxRenderAlloc = 64 << 20
	t.Cleanup(func() { render.MaxRenderAlloc = old })
	cfg := loadConfig(t, `
files:
  - path: /x
    content: '{{ $l := list }}{{ range until 1000 }}{{ $l = append $l (repeat 1000000 "x") }}{{ end }}{{ len $l }}'
`)
	snap := snapshot(map[string]string{"sites/a": `{"n": 1000000}`})
	_, err := render.NewCache().Render(context.Background(), cfg, snap, render.Node{}, t.TempDir(), runkind.Full)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "over its budget of 67108864")
	assert.False(t, errors.Is(err, render.ErrStuck), "the meter stops it: nothing to abandon")
}

// A render whose heap grows past its budget, by whatever calls, is
// stopped and reported as a stuck render (the process restarts), not left
// to kill the agent.
func TestARenderOverItsHeapBudgetIsAborted(t *testing.T) {
	old := render.SetMaxRenderHeap(64 << 20)
	t.Cleanup(func() { render.SetMaxRenderHeap(old) })
	cfg := loadConfig(t, `
files:
  - path: /x
    content: '{{ $l := list }}{{ range until 100000 }}{{ $l = append $l (repeat 100000 "y") }}{{ end }}{{ len $l }}'
`)
	_, err := render.NewCache().Render(context.Background(), cfg, snapshot(nil), render.Node{}, t.TempDir(), runkind.Full)
	require.ErrorIs(t, err, render.ErrStuck)
	assert.Contains(t, err.Error(), "the heap grew by")
}
