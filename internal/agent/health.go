package agent

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
)

// Timing of the problem record.
const (
	// problemAfter is how long the agent is not ready before it says why
	// in its problem record: past an election or a restart of etcd.
	problemAfter = 10 * time.Second
	// problemEvery is how often an unchanged problem is written again at
	// most, and a failed write retried.
	problemEvery = 30 * time.Second
)

// health follows the agent's readiness: since when it is not ready, for
// Healthy, and the problem record that tells ccm status why.
type health struct {
	mu        sync.Mutex
	ready     time.Time // the last time the agent was ready, or its start
	published string    // the problem written to etcd ("" none)
	tried     time.Time // the last write of the record
	host      string
}

func newHealth(host string) *health {
	return &health{ready: time.Now(), host: host}
}

// notReadyFor is how long the agent has not been ready at now.
func (h *health) notReadyFor(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Sub(h.ready)
}

// observe records the readiness check err at now, and writes the problem
// record once the agent has not been ready for problemAfter (deleting it
// once it is ready again). Writes fail while etcd does not answer; the
// record is written when it does and the agent still cannot make
// progress, which is when an operator needs it.
func (h *health) observe(ctx context.Context, a *Agent, err error, now time.Time) {
	h.mu.Lock()
	if err == nil {
		h.ready = now
	}
	since, published, tried := h.ready, h.published, h.tried
	h.mu.Unlock()
	var want *api.Problem // nil: delete the record
	if err == nil {
		if published == "" {
			return
		}
	} else {
		// An unchanged cause is written again every problemEvery; a new
		// one, or a write that failed, every problemAfter.
		wait := problemAfter
		if err.Error() == published {
			wait = problemEvery
		}
		if now.Sub(since) < problemAfter || now.Sub(tried) < wait {
			return
		}
		want = &api.Problem{Error: err.Error(), Since: since.UTC(), Host: h.host}
	}
	wctx, cancel := context.WithTimeout(ctx, problemTimeout)
	werr := a.cluster.ReportProblem(wctx, want)
	cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tried = now
	if werr != nil {
		a.log.Debug("write the problem record", zap.Error(werr))
		return
	}
	h.published = ""
	if want != nil {
		h.published = want.Error
	}
}
