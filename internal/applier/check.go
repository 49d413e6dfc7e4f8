package applier

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
)

// runCheck runs a file's check on its staged copy at staged; an error
// names the final path, never the copy.
func (a *Applier) runCheck(ctx context.Context, p *Plan, c *Change, staged string) error {
	check := command{config: p.Config.Name, dir: p.Config.Dir(), argv: c.file.Check.Expand(staged, c.Real), timeout: p.Config.Timeout, rename: []string{staged, c.Real}}
	if err := a.runCommand(ctx, check); err != nil {
		return fmt.Errorf("check %s: %w", c.Path, err)
	}
	return nil
}

// CheckFailure is a file whose check would fail.
type CheckFailure struct {
	Config string
	Path   string
	Err    error
}

// Check runs the check of every file the plans would create or change, on
// a copy of its new content in a private temporary directory, never under
// the root: nothing is written there, and the copies are removed. Checks
// run as in a run (checkStaged): whole sets, bisected, and per-file checks
// on the pool. It returns the files whose check fails, and how many it
// checked.
func (a *Applier) Check(ctx context.Context, plans []*Plan) ([]CheckFailure, int, error) {
	dir, err := os.MkdirTemp("", "ccm-check-*")
	if err != nil {
		return nil, 0, fmt.Errorf("check: %w", err)
	}
	defer os.RemoveAll(dir)
	var failed []CheckFailure
	n := 0
	for _, p := range plans {
		staged := map[int]string{}
		for i := range p.Changes {
			c := &p.Changes[i]
			if c.removes() || !c.Content || c.file == nil || (c.file.Check == nil && c.file.CheckAll == nil) {
				continue
			}
			n++
			staged[i] = filepath.Join(dir, fmt.Sprintf("%d-%s", n, path.Base(c.Path)))
			if err := os.WriteFile(staged[i], c.New, 0o600); err != nil {
				return failed, n, fmt.Errorf("check: %w", err)
			}
		}
		errs := a.checkStaged(ctx, p, staged)
		for _, i := range slices.Sorted(maps.Keys(errs)) {
			failed = append(failed, CheckFailure{Config: p.Config.Name, Path: p.Changes[i].Path, Err: errs[i]})
		}
	}
	return failed, n, nil
}
