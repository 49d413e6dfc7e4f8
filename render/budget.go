package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ccm-dev/ccm/configs"
)

// ErrOverBudget is returned for a file whose template writes more than
// max_file_size, or is still writing after render_timeout.
var ErrOverBudget = errors.New("over the render budget")

// ErrStuck is returned when a template neither finishes nor writes within
// its render_timeout (a loop over a huge count that writes nothing): Go
// cannot stop it, so the process must exit once the failure is recorded.
var ErrStuck = errors.New("render stuck and cannot be stopped")

// stuckGrace is how long past its render_timeout a silent template may run
// before it is declared stuck.
const stuckGrace = 2 * time.Second

// budget bounds the rendering of one file of cfg.
type budget struct {
	size     int
	timeout  time.Duration
	progress *atomic.Int64 // unix nanoseconds of the last write or file start
	current  *atomic.Pointer[string]
}

func newBudget(cfg *configs.Config) budget {
	b := budget{size: cfg.MaxFileSize, timeout: cfg.RenderTimeout, progress: &atomic.Int64{}, current: &atomic.Pointer[string]{}}
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
	now := time.Now()
	b.progress.Store(now.UnixNano())
	b.current.Store(&what)
	return &budgetWriter{b: b, deadline: now.Add(b.timeout)}
}

type budgetWriter struct {
	bytes.Buffer
	b        budget
	deadline time.Time
}

func (w *budgetWriter) Write(p []byte) (int, error) {
	now := time.Now()
	w.b.progress.Store(now.UnixNano())
	if w.Len()+len(p) > w.b.size {
		return 0, fmt.Errorf("%w: more than %d bytes (max_file_size)", ErrOverBudget, w.b.size)
	}
	if now.After(w.deadline) {
		return 0, fmt.Errorf("%w: still rendering after %s (render_timeout)", ErrOverBudget, w.b.timeout)
	}
	return w.Buffer.Write(p)
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
	b.progress.Store(time.Now().UnixNano())
	go func() {
		out, err := render()
		done <- result{out, err}
	}()
	tick := time.NewTicker(min(b.timeout, time.Second))
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			return r.out, r.err, false
		case <-ctx.Done():
			select {
			case <-done:
				return nil, context.Cause(ctx), false
			case <-time.After(stuckGrace):
				return nil, context.Cause(ctx), true
			}
		case now := <-tick.C:
			if idle := now.Sub(time.Unix(0, b.progress.Load())); idle > b.timeout+stuckGrace {
				what := "render"
				if p := b.current.Load(); p != nil {
					what = *p
				}
				return nil, fmt.Errorf("%s: %w: no output for %s (render_timeout %s)", what, ErrStuck, idle.Round(time.Second), b.timeout), true
			}
		}
	}
}
