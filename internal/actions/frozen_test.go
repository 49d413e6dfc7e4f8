package actions

import (
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stillRunning tells a handler that ended by itself, not yet reaped,
// from one that runs, and leaves the ended one to be reaped with its
// exit status: what the timeout asks before it kills.
func TestStillRunningTellsAnEndedHandlerAndLeavesItsStatus(t *testing.T) {
	t.Parallel()
	ended := exec.Command("/bin/sh", "-c", "exit 7")
	require.NoError(t, ended.Start())
	require.Eventually(t, func() bool { return !stillRunning(ended.Process.Pid) }, 10*time.Second, 5*time.Millisecond, "the handler ends")
	err := ended.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "its status is still there to reap")
	assert.Equal(t, 7, exitErr.ExitCode())
	assert.False(t, stillRunning(ended.Process.Pid), "reaped: not running")

	runs := exec.Command("/bin/sleep", "60")
	require.NoError(t, runs.Start())
	t.Cleanup(func() { _ = runs.Process.Kill(); _ = runs.Wait() })
	assert.True(t, stillRunning(runs.Process.Pid))
}
