// Package leaktest is the goroutine leak check of a test binary: goleak,
// told of the goroutines that etcd's own check (testutil) also ignores,
// and of the runtime's cleanup goroutines (runtime.AddCleanup, which
// os.File uses), which Go 1.26 shows in a goroutine dump.
package leaktest

import (
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Main runs the tests, then fails the binary if a goroutine outlives them.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		Check()
	}
	os.Exit(code)
}

// ignored are the goroutines that may outlive the tests: the runtime's
// and the standard library's background workers, and those etcd's leak
// check names as uninteresting.
var ignored = []goleak.Option{
	goleak.IgnoreTopFunction("runtime.runCleanups"),
	goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
	goleak.IgnoreAnyFunction("crypto/tls.(*certCache).evict"),
	goleak.IgnoreAnyFunction("os.(*file).close"),
	goleak.IgnoreAnyFunction("os.(*Process).Release"),
	goleak.IgnoreAnyFunction("net.(*netFD).Close"),
}

// Check exits the binary with 1 if another goroutine is still running,
// after waiting a while for the last ones to end. Idle HTTP connections
// are closed on every try: one whose response was still being finished at
// the first try (a member's /metrics, under load) is idle only later.
func Check() {
	deadline := time.Now().Add(10 * time.Second)
	for {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		err := goleak.Find(ignored...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "Unexpected goroutines running after all test(s): %v\n", err)
			os.Exit(1)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
