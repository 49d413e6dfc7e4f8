//go:build failpoints

package applier

import (
	"os"
	"syscall"
)

// crashAt kills the process with SIGKILL when CCM_CRASH_AT names step, so
// that tests can interrupt a run at an exact point: "journaled" (intent
// durable, nothing renamed), "renamed" (files in place, validate not run)
// and "validated" (validate passed, manifest not written).
func crashAt(step string) {
	if os.Getenv("CCM_CRASH_AT") == step {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
