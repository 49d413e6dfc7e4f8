package agent

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/metrics"
)

func TestAnOlderObservationOfTheFlagNeverUndoesANewerOne(t *testing.T) {
	cleared := 0
	f := newFlagState(metrics.New().Halted, func() { cleared++ })
	f.observe(true, 10)  // the watch: the flag is raised
	f.observe(false, 12) // the watch: an operator resumed
	f.observe(true, 11)  // a run that read the flag before the resume
	assert.NoError(t, f.waitClear(context.Background()), "the flag stays clear")
	assert.Equal(t, 1, cleared, "one converge asked for, at the resume")
}
