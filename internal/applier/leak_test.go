package applier_test

import (
	"testing"

	"github.com/ccm-dev/ccm/internal/leaktest"
)

// TestMain fails the package when a test leaves a goroutine running.
func TestMain(m *testing.M) { leaktest.Main(m) }
