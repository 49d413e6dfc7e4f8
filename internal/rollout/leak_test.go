package rollout_test

import (
	"testing"

	"github.com/ccm-dev/ccm/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }
