// Package leaktest is etcd's goroutine leak detection for a test binary,
// tolerant of the runtime's own transient goroutine: the one that runs
// cleanups (runtime.AddCleanup, which os.File uses) shows in a goroutine
// dump while it runs one, and etcd's filter does not know it.
package leaktest

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/testutil"
)

// Main runs the tests, then fails the binary if a goroutine outlives them.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		Check()
	}
	os.Exit(code)
}

// Check exits the binary with 1 if a goroutine other than the runtime's
// own is still running.
func Check() {
	waitForCleanups(5 * time.Second)
	testutil.MustCheckLeakedGoroutine()
}

// waitForCleanups waits until no goroutine runs a runtime cleanup, for at
// most d.
func waitForCleanups(d time.Duration) {
	buf := make([]byte, 2<<20)
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		if !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "runtime.runCleanups") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
