package actions_test

import (
	"testing"

	"github.com/ccm-dev/ccm/test/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }
