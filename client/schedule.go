package client

// schedule is a call's fan-out policy, apart from any I/O: at most batch
// nodes in flight, and no new send once maxFailures nodes failed. A call
// sends what send returns, reports each node's end to done, and stops
// when over says so.
type schedule struct {
	queue              []string // not sent yet, in order
	batch, maxFailures int      // batch 0: every node at once; maxFailures 0: no budget
	inflight, failures int
}

// newSchedule is the schedule of a call to nodes.
func newSchedule(nodes []string, batch, maxFailures int) *schedule {
	if batch <= 0 {
		batch = len(nodes)
	}
	return &schedule{queue: nodes, batch: batch, maxFailures: maxFailures}
}

// send returns the nodes to send to now (none while the batch is full, or
// once the failure budget is spent), and counts them in flight.
func (s *schedule) send() []string {
	if s.maxFailures > 0 && s.failures >= s.maxFailures {
		return nil
	}
	n := min(s.batch-s.inflight, len(s.queue))
	if n <= 0 {
		return nil
	}
	out := s.queue[:n:n]
	s.queue = s.queue[n:]
	s.inflight += n
	return out
}

// done records that a node in flight ended, and whether it succeeded.
func (s *schedule) done(ok bool) {
	s.inflight--
	if !ok {
		s.failures++
	}
}

// over reports whether the call is over once it sent what send returned:
// nothing is in flight. unsent are then the nodes it never sends to
// (ErrNotSent).
func (s *schedule) over() (unsent []string, over bool) {
	if s.inflight > 0 {
		return nil, false
	}
	return s.queue, true
}
