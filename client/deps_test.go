package client_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A cluster API that imports client is built against the wire (package
// api), the key layout and etcd's client: not against ccm's templates,
// Sprig, Prometheus or the agent's packages.
func TestTheClientIsBuiltOnTheWireAlone(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/Masterminds/sprig", "github.com/prometheus/", "github.com/ccm-dev/ccm/internal/actions",
			"github.com/ccm-dev/ccm/internal/templates", "github.com/ccm-dev/ccm/internal/configs", "github.com/ccm-dev/ccm/internal/metrics", "github.com/ccm-dev/ccm/internal/render"} {
			require.False(t, strings.HasPrefix(dep, banned), "client depends on %s", dep)
		}
	}
}
