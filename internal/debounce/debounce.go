// Package debounce collects object-type change events and releases them as
// one batch once they settle.
//
// A batch is released when no event arrived for the quiet period, or when
// the first event of the batch is older than the ceiling (max wait), so
// constant churn cannot starve a node. Events that arrive while the caller
// is busy with the previous batch (a run) are collected for the next one.
//
// Guarantees:
//   - No event is dropped: every Add is in exactly one batch returned by
//     Next, or still pending.
//   - Batches are sets: a type changed a hundred times appears once.
//   - Next returns when ctx is cancelled; pending events stay pending.
//
// The clock is injected, so tests step a fake clock instead of sleeping.
package debounce

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ccm-dev/ccm/internal/runkind"
)

// Batch is a set of changes released together.
type Batch struct {
	// Types are the object types that changed, sorted.
	Types []string
	// Kind is runkind.Full for a converge of every configuration (start, resync,
	// compaction, resume, reload).
	Kind runkind.Kind
	// Reasons says why a full run was asked for, for logs.
	Reasons []string
}

// Debouncer collects events. The zero value is not usable; call New.
type Debouncer struct {
	quiet, maxWait time.Duration
	clock          clockwork.Clock

	mu      sync.Mutex
	types   map[string]bool
	kind    runkind.Kind
	reasons []string
	first   time.Time
	last    time.Time
	wake    chan struct{} // closed and replaced on every Add
}

// New returns a Debouncer with a quiet period and a ceiling. A nil clock is
// the real one.
func New(quiet, maxWait time.Duration, clock clockwork.Clock) *Debouncer {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &Debouncer{quiet: quiet, maxWait: maxWait, clock: clock, types: map[string]bool{}, wake: make(chan struct{})}
}

// Add records that types changed.
func (d *Debouncer) Add(types ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range types {
		d.types[t] = true
	}
	d.touch()
}

// AddAll asks for a converge of everything, giving the reason.
func (d *Debouncer) AddAll(reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kind = runkind.Full
	d.reasons = append(d.reasons, reason)
	d.touch()
}

// Requeue puts a batch back, e.g. after a run could not happen.
func (d *Debouncer) Requeue(b Batch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range b.Types {
		d.types[t] = true
	}
	d.kind = d.kind.With(b.Kind)
	d.reasons = append(d.reasons, b.Reasons...)
	d.touch()
}

// touch records an event; d.mu is held.
func (d *Debouncer) touch() {
	now := d.clock.Now()
	if d.first.IsZero() {
		d.first = now
	}
	d.last = now
	close(d.wake)
	d.wake = make(chan struct{})
}

func (d *Debouncer) pendingLocked() bool { return len(d.types) > 0 || d.kind == runkind.Full }

// Pending reports how many types (plus one for a converge-all) wait.
func (d *Debouncer) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.types)
	if d.kind == runkind.Full {
		n++
	}
	return n
}

// Next blocks until a batch is due and returns it, or returns ctx's error.
func (d *Debouncer) Next(ctx context.Context) (Batch, error) {
	for {
		if err := ctx.Err(); err != nil {
			return Batch{}, err
		}
		d.mu.Lock()
		wake := d.wake
		if !d.pendingLocked() {
			d.mu.Unlock()
			select {
			case <-ctx.Done():
				return Batch{}, ctx.Err()
			case <-wake:
				continue
			}
		}
		due := d.last.Add(d.quiet)
		if d.kind == runkind.Full { // a full run is not a burst of events: nothing to batch
			due = d.clock.Now()
		}
		if ceiling := d.first.Add(d.maxWait); d.maxWait > 0 && ceiling.Before(due) {
			due = ceiling
		}
		wait := due.Sub(d.clock.Now())
		if wait <= 0 {
			b := d.takeLocked()
			d.mu.Unlock()
			return b, nil
		}
		d.mu.Unlock()
		timer := d.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return Batch{}, ctx.Err()
		case <-wake:
		case <-timer.Chan():
		}
		timer.Stop()
	}
}

// takeLocked returns the pending batch and clears it; d.mu is held.
func (d *Debouncer) takeLocked() Batch {
	b := Batch{Kind: d.kind, Reasons: d.reasons}
	for t := range d.types {
		b.Types = append(b.Types, t)
	}
	sort.Strings(b.Types)
	d.types, d.kind, d.reasons, d.first = map[string]bool{}, runkind.Changed, nil, time.Time{}
	return b
}
