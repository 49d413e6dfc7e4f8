package applier

import (
	"sync/atomic"
	"time"
)

// progress records that a run moves on: each configuration, each staged
// file and each command start and end. A run that records nothing for
// longer than its longest step may take is stuck (see Stalled).
type progress struct {
	running atomic.Bool
	last    atomic.Int64 // unix nanoseconds
}

func (p *progress) mark() { p.last.Store(time.Now().UnixNano()) }

func (p *progress) start() { p.mark(); p.running.Store(true) }

func (p *progress) stop() { p.running.Store(false) }

// Stalled returns how long a run under way has made no progress, or 0
// when no run is under way. It is safe to call from any goroutine.
func (a *Applier) Stalled() time.Duration {
	if !a.progress.running.Load() {
		return 0
	}
	return time.Since(time.Unix(0, a.progress.last.Load()))
}
