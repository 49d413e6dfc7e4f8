package applier_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/render/templategen"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// ccm plan right after a successful run finds nothing to change, for every
// template that loads: generated templates, random object puts and
// deletes, each followed by the agent's change-driven run (its caches
// trusted) and then by a plan, which renders everything afresh and reads
// the disk.
func TestPlanAfterARunFindsNothingForGeneratedTemplates(t *testing.T) {
	seeds := 120
	if testing.Short() {
		seeds = 30
	}
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		each, single := templategen.Generate(r, true), templategen.Generate(r, false)
		cfg, err := templategen.Config(each, single)
		require.NoError(t, err)
		set := &configs.Set{Dir: t.TempDir(), Configs: map[string]*configs.Config{"c": cfg}, Order: []string{"c"}}
		ap := applier.New(applier.Options{Root: t.TempDir(), StateDir: t.TempDir(), ConfigDir: set.Dir, Node: render.Node{Name: "n1"}})
		mirror, live := objects.NewMirror("/ccm"), map[string]bool{}
		for rev := int64(2); rev < 12; rev++ {
			mirror.Apply([]objects.KV{templategen.Change(r, live, rev)})
			mirror.SetRevision(rev)
			snap := mirror.Snapshot()
			report := ap.Run(context.Background(), runkind.Changed, set, snap, []string{"c"})
			if report.Err != nil {
				continue // a template that fails here fails in the plan too
			}
			plans, err := ap.PlanAll(set, snap, []string{"c"})
			require.NoError(t, err)
			for _, p := range plans {
				var diff strings.Builder
				applier.WritePlans(&diff, []*applier.Plan{p}, false)
				require.False(t, p.Changed(), "seed %d, revision %d: a plan right after the run changes:\n%s\nfor_each template:\n%s\nsingle template:\n%s", seed, rev, diff.String(), each, single)
			}
		}
	}
}
