package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/rollout"
)

func newPlanCmd(a *app) *cobra.Command {
	var names []string
	var objectsFile, color string
	var onCluster, check bool
	var signKey, release, releaseKeys string
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show, as unified diffs, what apply would change on this node",
		Long: `Render every configuration (or --config NAME) and print unified diffs of the
files that would be created, changed or removed, then a summary. Once a
release is promoted, the plan reads it (what the agents run), not
--config-dir; --release ID previews another.
With --cluster, every alive node's agent plans itself (the ccm.plan action)
and each node's plan is printed; nodes that do not answer are named.
With --check, the check command of every file that would be created or
changed runs on a copy of its new content in a private temporary directory:
nothing is written under the root. Files whose check fails are listed.
Exit codes: 0 no changes, 2 changes, 1 error (a check that would fail, or a
node without a plan).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if release != "" {
				dir, id, cleanup, err := a.openRelease(cmd, release, releaseKeys)
				if err != nil {
					return err
				}
				defer cleanup()
				release, a.configDir = id, dir
			} else if !onCluster && objectsFile == "" {
				c, err := a.cluster(cmd.Context())
				if err != nil {
					return err
				}
				_, _, cleanup, err := a.promotedRelease(cmd.Context(), c, releaseKeys)
				if err != nil {
					return err
				}
				defer cleanup()
			}
			if onCluster {
				return a.planCluster(cmd.Context(), useColor(color, a.stdout), signKey, release)
			}
			if objectsFile == "" && len(a.labels) == 0 {
				if err := a.publishedLabels(cmd.Context()); err != nil {
					return err
				}
			}
			set, ap, selected, err := a.prepare(names)
			if err != nil {
				return err
			}
			snap, err := a.snapshot(cmd.Context(), objectsFile)
			if err != nil {
				return err
			}
			plans, planErr := ap.PlanAll(set, snap, selected)
			changed := applier.WritePlans(a.stdout, plans, useColor(color, a.stdout))
			if planErr != nil {
				return planErr
			}
			if check {
				if err := a.checkPlans(cmd.Context(), ap, plans); err != nil {
					return err
				}
			}
			if changed {
				return errChanges
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&names, "config", nil, "plan only this configuration (repeatable)")
	a.registerFlagCompletion(cmd, "config", configNames)
	cmd.Flags().StringVar(&objectsFile, "objects", "", "plan offline from `FILE.json` shaped {\"<type>\": {\"<id>\": {...}}}")
	cmd.Flags().StringVar(&color, "color", "auto", "colour diffs: auto, always or never")
	cmd.Flags().BoolVar(&check, "check", false, "also run the check of every file that would change, on a copy outside the root; exit 1 if any fails")
	cmd.Flags().BoolVar(&onCluster, "cluster", false, "ask every alive node's agent for its plan (the ccm.plan action) and print each")
	cmd.Flags().StringVar(&signKey, "sign-key", "", "with --cluster: sign the requests with this OpenSSH ed25519 private key `FILE`")
	cmd.Flags().StringVar(&release, "release", "", "plan under the stored release `ID` (6 or more digits) instead of --config-dir; with --cluster, every node plans under it")
	releaseKeysFlag(cmd, &releaseKeys)
	cmd.MarkFlagsMutuallyExclusive("cluster", "objects")
	cmd.MarkFlagsMutuallyExclusive("cluster", "check")
	cmd.MarkFlagsMutuallyExclusive("cluster", "config")
	return cmd
}

// openRelease fetches the stored release named by at least 6 digits of its
// id, verifies it with the release keys in keysFile (releaseVerifier),
// and stages it in a temporary directory: the configuration directory a
// plan under it reads.
func (a *app) openRelease(cmd *cobra.Command, short, keysFile string) (dir, id string, cleanup func(), err error) {
	err = a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
		s := releases.NewStore(c.Client(), a.prefix)
		if id, err = s.Resolve(ctx, short); err != nil {
			return err
		}
		verify, err := a.releaseVerifier(keysFile)
		if err != nil {
			return err
		}
		dir, cleanup, err = s.Open(ctx, id, verify)
		return err
	})
	return dir, id, cleanup, err
}

// publishedLabels takes the labels the node's agent announced, so that a
// plan without --label sees what the agent would converge; it says which
// it used on stderr.
func (a *app) publishedLabels(ctx context.Context) error {
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := a.requestContext(ctx)
	defer cancel()
	p, err := c.Presence(ctx, a.node)
	if err != nil {
		return err
	}
	if p == nil {
		fmt.Fprintf(a.stderr, "ccm: no --label given and no agent alive for node %s: planning with no labels\n", render.Escape(a.node))
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		a.labels = append(a.labels, k+"="+p.Labels[k])
	}
	used := strings.Join(a.labels, ",")
	if used == "" {
		used = "(none)"
	}
	fmt.Fprintf(a.stderr, "ccm: using the labels node %s's agent published: %s\n", render.Escape(a.node), render.Escape(used))
	return nil
}

// snapshot reads the objects from a file, or from etcd at one revision.
func (a *app) snapshot(ctx context.Context, file string) (*objects.Snapshot, error) {
	sch, err := a.schemas()
	if err != nil {
		return nil, err
	}
	if file != "" {
		snap, err := objects.ReadFile(file, sch)
		if err == nil && snap.Revision == 0 {
			fmt.Fprintf(a.stderr, "%s has no revisions (%s and %s, which ccm object export writes): .Revision and .Object.Revision render as 0 here, unlike on the nodes\n",
				file, objects.FileRevision, objects.FileRevisions)
		}
		return snap, err
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.requestContext(ctx)
	defer cancel()
	snap, err := objects.Load(ctx, c.Client(), a.prefix, sch)
	if err != nil {
		return nil, err
	}
	a.warnIgnored(snap)
	qs, err := c.Quarantines(ctx)
	if err != nil {
		return nil, err
	}
	return rollout.Hold(snap, qs), nil // as the node's next run would
}

func (a *app) warnIgnored(snap *objects.Snapshot) {
	for _, err := range snap.Ignored {
		a.log.Warn("ignored key", zap.Error(err))
	}
}

func useColor(mode string, w io.Writer) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	return isTerminal(w)
}

// planCluster prints every alive node's own plan, from the ccm.plan
// action, in node order.
func (a *app) planCluster(ctx context.Context, color bool, signKey, release string) error {
	c, err := a.client(ctx, signKey)
	if err != nil {
		return err
	}
	var changed, failed bool
	call := client.Call{Action: agent.ActionPlan, To: client.Targets{All: true}, By: a.by()}
	if release != "" {
		call.Params = map[string]string{agent.PlanRelease: release}
	}
	for reply, err := range c.Run(ctx, call) {
		var ne *client.NodeError
		if err != nil && !errors.As(err, &ne) {
			return err
		}
		title := "# node " + render.Escape(reply.Node)
		var out agent.PlanOutput
		switch {
		case ne != nil:
			failed = true
			fmt.Fprintf(a.stdout, "%s: no plan: %s\n", title, render.Escape(ne.Err.Error()))
			continue
		case reply.State != api.StateSucceeded || json.Unmarshal(reply.Output, &out) != nil:
			failed = true
			fmt.Fprintf(a.stdout, "%s: no plan: %s: %s\n", title, reply.State, render.Escape(firstLine(reply.Error)))
			continue
		}
		changed = changed || out.Changed
		fmt.Fprintf(a.stdout, "%s (revision %d)\n", title, out.Revision)
		fmt.Fprint(a.stdout, applier.Colorize(out.Diff, color))
	}
	switch {
	case failed:
		return errors.New("some nodes gave no plan")
	case changed:
		return errChanges
	}
	return nil
}

// checkPlans runs the checks of the files the plans would write and lists
// those that would fail.
func (a *app) checkPlans(ctx context.Context, ap *applier.Applier, plans []*applier.Plan) error {
	failed, n, err := ap.Check(ctx, plans)
	if err != nil {
		return err
	}
	for _, f := range failed {
		fmt.Fprintf(a.stdout, "! check fails: %s (configuration %s): %s\n", render.Escape(f.Path), render.Escape(f.Config), render.Escape(firstLine(f.Err.Error())))
	}
	fmt.Fprintf(a.stdout, "Checks: %d files checked, %d would fail.\n", n, len(failed))
	if len(failed) > 0 {
		return fmt.Errorf("%d files would fail their check", len(failed))
	}
	return nil
}
