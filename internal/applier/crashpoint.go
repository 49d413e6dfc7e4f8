//go:build !failpoints

package applier

// crashAt is a no-op outside builds with the failpoints tag, which the
// crash tests use to SIGKILL the process at a named step of a run.
func crashAt(string) {}
