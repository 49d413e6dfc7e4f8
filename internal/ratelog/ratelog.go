// Package ratelog limits repeated log lines: while etcd does not answer,
// every retry of every loop (and of the etcd client) fails the same way,
// and a fleet of agents must not fill its disks saying so.
//
// A warning or an error is written once per cause per interval; the
// cause is its level, logger, message and error. Repeats within the
// interval are counted, and the next line of that cause says how many
// were left out ("suppressed"). Debug and info lines pass: they tell of
// events (a run, an action), not of retries.
//
// zap's own sampler drops repeats by message alone and cannot say how
// many it dropped in the line that follows, which is what an operator
// reading the journal needs.
package ratelog

import (
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// DefaultInterval is how often one cause is written at most.
const DefaultInterval = 30 * time.Second

// maxCauses bounds the causes remembered; past it, the ones not seen for
// an interval are forgotten.
const maxCauses = 1024

// New wraps core so that each cause of a warning or an error is written
// once per interval.
func New(core zapcore.Core, interval time.Duration) zapcore.Core {
	return &limited{Core: core, state: &state{interval: interval, causes: map[string]*cause{}}}
}

type state struct {
	interval time.Duration
	mu       sync.Mutex
	causes   map[string]*cause
}

type cause struct {
	written    time.Time
	suppressed int
}

type limited struct {
	zapcore.Core
	state *state
}

// With keeps the limit on the child core, shared with its parent.
func (l *limited) With(fields []zapcore.Field) zapcore.Core {
	return &limited{Core: l.Core.With(fields), state: l.state}
}

// Check adds this core (which Write decides in) for an enabled entry.
func (l *limited) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if l.Enabled(ent.Level) {
		return ce.AddCore(ent, l)
	}
	return ce
}

// unlimited marks a line that is never limited; encoders skip it.
const unlimited = "ratelog.unlimited"

// Each is a field that exempts its line from the limit: a warning that
// tells of an event each time (a customer's file moved aside), not of a
// retry. Encoders write nothing for it.
func Each() zapcore.Field { return zapcore.Field{Type: zapcore.SkipType, String: unlimited} }

// Write writes the entry unless its cause was written within the
// interval.
func (l *limited) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if ent.Level < zapcore.WarnLevel || each(fields) {
		return l.Core.Write(ent, fields)
	}
	n, ok := l.state.admit(key(ent, fields), ent.Time)
	if !ok {
		return nil
	}
	if n > 0 {
		fields = append(fields[:len(fields):len(fields)], zapcore.Field{Key: "suppressed", Type: zapcore.Int64Type, Integer: int64(n)})
	}
	return l.Core.Write(ent, fields)
}

// admit reports whether a line of cause k may be written at now, and how
// many were suppressed since the last one.
func (s *state) admit(k string, now time.Time) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.causes[k]
	if c != nil && now.Sub(c.written) < s.interval {
		c.suppressed++
		return 0, false
	}
	if c == nil {
		if len(s.causes) >= maxCauses {
			s.forget(now)
		}
		c = &cause{}
		s.causes[k] = c
	}
	n := c.suppressed
	c.written, c.suppressed = now, 0
	return n, true
}

// forget drops the causes not written for an interval.
func (s *state) forget(now time.Time) {
	for k, c := range s.causes {
		if now.Sub(c.written) >= s.interval {
			delete(s.causes, k)
		}
	}
}

func each(fields []zapcore.Field) bool {
	for _, f := range fields {
		if f.Type == zapcore.SkipType && f.String == unlimited {
			return true
		}
	}
	return false
}

// key is the cause of an entry: level, logger, message and error text.
func key(ent zapcore.Entry, fields []zapcore.Field) string {
	k := ent.Level.String() + "\x00" + ent.LoggerName + "\x00" + ent.Message
	for _, f := range fields {
		if f.Type == zapcore.ErrorType {
			if err, ok := f.Interface.(error); ok && err != nil {
				k += "\x00" + err.Error()
			}
		}
	}
	return k
}
