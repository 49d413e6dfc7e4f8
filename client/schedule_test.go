package client

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// The fan-out policy alone: which nodes a call sends to, in which waves,
// for a given sequence of outcomes (answers come back in send order).
func TestTheScheduleSendsInBatchesAndStopsAtTheFailureBudget(t *testing.T) {
	nodes := []string{"a", "b", "c", "d", "e"}
	for name, tc := range map[string]struct {
		batch, maxFailures int
		failing            map[string]bool
		sends              [][]string
		unsent             []string
	}{
		"all at once":               {sends: [][]string{{"a", "b", "c", "d", "e"}}},
		"all at once, failures":     {maxFailures: 1, failing: map[string]bool{"a": true}, sends: [][]string{{"a", "b", "c", "d", "e"}}},
		"batches of two":            {batch: 2, sends: [][]string{{"a", "b"}, {"c"}, {"d"}, {"e"}}},
		"serial":                    {batch: 1, sends: [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"e"}}},
		"batch above the nodes":     {batch: 9, sends: [][]string{{"a", "b", "c", "d", "e"}}},
		"budget spent by the first": {batch: 1, maxFailures: 1, failing: map[string]bool{"a": true}, sends: [][]string{{"a"}}, unsent: []string{"b", "c", "d", "e"}},
		"budget of two": {batch: 2, maxFailures: 2, failing: map[string]bool{"a": true, "c": true},
			sends: [][]string{{"a", "b"}, {"c"}, {"d"}}, unsent: []string{"e"}},
		"failures under the budget": {batch: 2, maxFailures: 3, failing: map[string]bool{"b": true},
			sends: [][]string{{"a", "b"}, {"c"}, {"d"}, {"e"}}},
		"budget reached while others run": {batch: 3, maxFailures: 1, failing: map[string]bool{"a": true},
			sends: [][]string{{"a", "b", "c"}}, unsent: []string{"d", "e"}},
	} {
		t.Run(name, func(t *testing.T) {
			s := newSchedule(nodes, tc.batch, tc.maxFailures)
			var sends [][]string
			var flight []string
			for {
				if send := s.send(); len(send) > 0 {
					sends = append(sends, send)
					flight = append(flight, send...)
				}
				if unsent, over := s.over(); over {
					assert.Equal(t, tc.sends, sends)
					assert.Equal(t, len(tc.unsent), len(unsent))
					if len(tc.unsent) > 0 {
						assert.Equal(t, tc.unsent, unsent)
					}
					return
				}
				s.done(!tc.failing[flight[0]])
				flight = flight[1:]
			}
		})
	}
}

// A call to no node is over at once, and a schedule never sends a node
// twice.
func TestTheScheduleOfNoNodeIsOver(t *testing.T) {
	s := newSchedule(nil, 0, 0)
	assert.Empty(t, s.send())
	unsent, over := s.over()
	assert.True(t, over)
	assert.Empty(t, unsent)
}
