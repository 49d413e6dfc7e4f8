package dashboard_test

import (
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/testutil"
)

func TestMain(m *testing.M) { testutil.MustTestMainWithLeakDetection(m) }
