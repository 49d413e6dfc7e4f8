package embedded_test

import (
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/testutil"
)

// TestMain fails the package when a test leaves a goroutine running.
func TestMain(m *testing.M) { testutil.MustTestMainWithLeakDetection(m) }
