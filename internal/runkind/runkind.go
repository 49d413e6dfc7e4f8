// Package runkind names the two kinds of run, the one distinction every
// layer of a converge shares: the debouncer that asks for a run, the
// rollout that takes the lock for it, the applier that plans it and the
// render cache.
package runkind

// Kind is what a run checks.
type Kind uint8

const (
	// Changed is a run for object changes: it renders what they touch and
	// trusts the files this node wrote or verified and whose desired
	// state is unchanged.
	Changed Kind = iota
	// Full renders everything and checks every file on disk (start,
	// resync, resume, reload, apply --once, ccm.converge): it repairs
	// drift made by hand.
	Full
)

// With is the kind of a run that does the work of both k and other: a
// batch with a full run in it is a full run.
func (k Kind) With(other Kind) Kind { return max(k, other) }

// String names the kind, for logs.
func (k Kind) String() string {
	if k == Full {
		return "full"
	}
	return "changed"
}
