package main

import (
	"os"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/testutil"
)

// TestMain fails the package when a test leaves a goroutine running. The
// machine's /etc/default/ccm is not the tests' business.
func TestMain(m *testing.M) {
	os.Setenv("CCM_DEFAULTS_FILE", "")
	testutil.MustTestMainWithLeakDetection(m)
}
