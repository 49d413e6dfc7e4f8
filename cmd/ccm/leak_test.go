package main

import (
	"os"
	"testing"

	"github.com/ccm-dev/ccm/internal/leaktest"
)

// TestMain fails the package when a test leaves a goroutine running. The
// machine's /etc/default/ccm is not the tests' business.
func TestMain(m *testing.M) {
	os.Setenv("CCM_DEFAULTS_FILE", "")
	leaktest.Main(m)
}
