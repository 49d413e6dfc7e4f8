package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/templates"
)

// ErrOverBudget is returned for a file whose template writes more than
// max_file_size, or is still writing after render_timeout.
var ErrOverBudget = errors.New("over the render budget")

// ErrStuck is returned when a template neither finishes nor writes within
// its render_timeout (a loop over a huge count that writes nothing): Go
// cannot stop it, so the process must exit once the failure is recorded.
var ErrStuck = errors.New("render stuck and cannot be stopped")

// MaxRenderAlloc is the most bytes the large calls of one
// configuration's render may make in all (templates.Meter): each is
// bounded, and this bounds a loop of them.
var MaxRenderAlloc int64 = 512 << 20

// maxRenderHeap is how much the heap may grow while one configuration
// renders, after a collection: past it the render is over its memory
// budget, aborted, and the process must restart (as for ErrStuck). A
// variable for the test that shows it.
var maxRenderHeap int64 = 1 << 30

// memEvery is how often the heap is read while a render runs.
const memEvery = 20 * time.Millisecond

// heapBytes is the heap's objects, live or not yet swept.
func heapBytes() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// stuckGrace is how long past its render_timeout a silent template may run
// before it is declared stuck.
const stuckGrace = 2 * time.Second

// budget bounds the rendering of one file of cfg.
type budget struct {
	size    int
	timeout time.Duration
	// writes counts writes and file starts: watch sees progress in it.
	writes *atomic.Int64
	// deadline is the unix nanoseconds by which the current file must be
	// written; a writer looks at the clock every clockEvery writes.
	deadline *atomic.Int64
	current  *atomic.Pointer[string]
}

// clockEvery is how many writes pass between two looks at the clock: a
// template that ranges over 10,000 objects writes 50,000 times, and
// time.Now on each was a tenth of the render.
const clockEvery = 64

func newBudget(cfg *configs.Config) budget {
	b := budget{size: cfg.MaxFileSize, timeout: cfg.RenderTimeout,
		writes: &atomic.Int64{}, deadline: &atomic.Int64{}, current: &atomic.Pointer[string]{}}
	if b.size <= 0 {
		b.size = configs.DefaultMaxFileSize
	}
	if b.timeout <= 0 {
		b.timeout = configs.DefaultRenderTimeout
	}
	return b
}

// writer returns a buffer for what renders (a path or a file, as errors
// name it) that refuses to grow past the size budget, or to be written
// after the time budget: a template writing either way fails at its next
// write.
func (b budget) writer(what string) *budgetWriter {
	b.writes.Add(1)
	b.deadline.Store(time.Now().Add(b.timeout).UnixNano())
	b.current.Store(&what)
	return b.part()
}

// part returns a buffer for a part of the current file (a range's
// elements, see Data.CCMRange), under the same budgets.
func (b budget) part() *budgetWriter { return &budgetWriter{b: b} }

type budgetWriter struct {
	bytes.Buffer
	b budget
	n int
}

func (w *budgetWriter) Write(p []byte) (int, error) {
	w.b.writes.Add(1)
	if w.Len()+len(p) > w.b.size {
		return 0, fmt.Errorf("%w: more than %d bytes (max_file_size)", ErrOverBudget, w.b.size)
	}
	if w.n++; w.n%clockEvery == 0 && time.Now().UnixNano() > w.b.deadline.Load() {
		return 0, fmt.Errorf("%w: still rendering after %s (render_timeout)", ErrOverBudget, w.b.timeout)
	}
	return w.Buffer.Write(p)
}

// WriteString writes a part rendered before, under the same budgets.
func (w *budgetWriter) WriteString(s string) (int, error) {
	if w.Len()+len(s) > w.b.size {
		return 0, fmt.Errorf("%w: more than %d bytes (max_file_size)", ErrOverBudget, w.b.size)
	}
	w.b.writes.Add(1)
	return w.Buffer.WriteString(s)
}

// watch runs render in a goroutine and returns its result, or ErrStuck
// when it made no progress for longer than the time budget, or ctx's error
// when ctx ends first. A render still running when ctx ends gets
// stuckGrace to finish; after that, or when stuck, the goroutine is
// abandoned (text/template cannot be interrupted) and abandoned is true:
// the caller must not render again in this process.
func (b budget) watch(ctx context.Context, render func() (*Output, error)) (out *Output, err error, abandoned bool) {
	type result struct {
		out *Output
		err error
	}
	done := make(chan result, 1)
	seen, since := b.writes.Load(), time.Now()
	meter := templates.NewMeter(MaxRenderAlloc)
	go func() {
		var r result
		templates.Metered(meter, func() { r.out, r.err = render() })
		done <- r
	}()
	tick := time.NewTicker(min(b.timeout, time.Second))
	defer tick.Stop()
	mem := time.NewTicker(memEvery)
	defer mem.Stop()
	base := heapBytes()
	for {
		select {
		case r := <-done:
			return r.out, r.err, false
		case <-mem.C:
			if heapBytes()-base <= maxRenderHeap {
				continue
			}
			runtime.GC() // what is garbage is not the render's
			if grown := heapBytes() - base; grown > maxRenderHeap {
				meter.Abort()
				what := "render"
				if p := b.current.Load(); p != nil {
					what = *p
				}
				return nil, fmt.Errorf("%s: %w: the heap grew by %d MiB while it rendered, over the budget of %d MiB", what, ErrStuck, grown>>20, maxRenderHeap>>20), true
			}
		case <-ctx.Done():
			select {
			case <-done:
				return nil, context.Cause(ctx), false
			case <-time.After(stuckGrace):
				return nil, context.Cause(ctx), true
			}
		case now := <-tick.C:
			if w := b.writes.Load(); w != seen {
				seen, since = w, now
			}
			if idle := now.Sub(since); idle > b.timeout+stuckGrace {
				what := "render"
				if p := b.current.Load(); p != nil {
					what = *p
				}
				return nil, fmt.Errorf("%s: %w: no output for %s (render_timeout %s)", what, ErrStuck, idle.Round(time.Second), b.timeout), true
			}
		}
	}
}
