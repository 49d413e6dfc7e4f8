package rollout

// Again is what runs after a run.
type Again int

// What runs after a run.
const (
	// Nothing: the batch is over.
	Nothing Again = iota
	// Same: the same batch runs again.
	Same
	// Everything: a full run, whatever the batch was.
	Everything
)

// Settlement is what the caller of a run does next, from Result.Next: the
// one reading of a run's outcome, which the agent's loop, the
// ccm.converge action and ccm apply --once each carry out with what they
// have (a debouncer and a backoff, or an exit code).
type Settlement struct {
	// Again is what runs next.
	Again Again
	// Backoff: the run could not start, or its outcome was not recorded;
	// the next attempt waits.
	Backoff bool
	// NewSession: the lock was lost mid-run; the next run opens a new
	// session.
	NewSession bool
	// Gate: the failure flag or the pause held the run back (Result.Failure,
	// Result.Paused, read at Result.FlagRevision); it runs again once
	// they clear.
	Gate bool
	// Exit: the process must end with Result.Err (a template that cannot
	// be stopped spins; the flag is raised).
	Exit bool
}

// Settle returns what the caller of the run that ended with res does next.
func Settle(res Result) Settlement {
	switch res.Next() {
	case Requeue:
		return Settlement{Again: Same, Gate: true}
	case Retry:
		return Settlement{Again: Same, Backoff: true}
	case RetryAll:
		return Settlement{Again: Everything, Backoff: true}
	case RequeueAll:
		return Settlement{Again: Everything, NewSession: res.LockLost}
	case Exit:
		return Settlement{Exit: true}
	}
	return Settlement{}
}
