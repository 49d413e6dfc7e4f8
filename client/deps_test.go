package client_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A cluster API that imports client is built against the wire (package
// api) and etcd's client alone: no package of ccm's agent, and so no
// templates, Sprig or Prometheus.
func TestTheClientIsBuiltOnTheWireAlone(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/ccm-dev/ccm/") {
			require.Contains(t, []string{"github.com/ccm-dev/ccm/api", "github.com/ccm-dev/ccm/client"}, dep, "client depends on ccm's %s", dep)
		}
		for _, banned := range []string{"github.com/Masterminds/", "github.com/prometheus/", "github.com/santhosh-tekuri/"} {
			require.False(t, strings.HasPrefix(dep, banned), "client depends on %s", dep)
		}
	}
}
