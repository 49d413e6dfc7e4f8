package applier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"
)

// One transaction per run. Each configuration's phase is a journaled
// transaction of its own (journal.go); a run also keeps the journal of
// every phase it carried out (runTxn). When the run fails (a
// configuration failed, not an object quarantined; a failed on_change
// does not count: its files were validated), the phases it carried out are
// rolled back in reverse order from those journals, which hold the old
// content, mode and owner of every path, and the manifest before the
// phase. Then the on_change of each rolled-back configuration runs again,
// so that services reload the restored files. A canary whose second
// configuration refuses a release thus runs the previous release whole,
// not half of each.
//
// A rollback writes no new state: it puts back what the node ran before
// the run, which was validated then. It needs neither the fence nor the
// lock (see RollBackInterrupted).

// RolledBack is the result of a configuration that converged in a run
// that then failed: its files are back as they were before the run.
const RolledBack Result = "rolled back"

// runTxn is the journals of the phases a run carried out, in order.
type runTxn struct {
	done []*journal
}

// keep records j, a phase carried out in the current run, if a run is
// under way.
func (t *runTxn) keep(j *journal) {
	if t != nil {
		t.done = append(t.done, j)
	}
}

// rollBackRun undoes the phases of t, newest first, then runs the
// on_change of each configuration it restored, once, in the order they
// ran. Outcomes of the configurations restored become RolledBack.
func (a *Applier) rollBackRun(ctx context.Context, rs *runState, t *runTxn) {
	ctx = context.WithoutCancel(ctx) // a rollback is finished, whatever happens
	var order []*journal
	seen := map[string]bool{}
	for i := len(t.done) - 1; i >= 0; i-- {
		j := t.done[i]
		if err := a.rollBack(j); err != nil {
			a.log.Error("roll back", zap.String("config", j.Config), zap.Error(err))
			rs.errs = append(rs.errs, fmt.Errorf("configuration %s: rolling back the failed run: %w", j.Config, err))
			continue
		}
		if o := rs.outcomes[j.Config]; o != nil && o.Result != Failed {
			o.Result, o.Error = RolledBack, "rolled back: the run failed"
		}
		a.log.Warn("configuration rolled back: the run failed", zap.String("config", j.Config), zap.Int("files", len(j.Files)))
		if !seen[j.Config] {
			seen[j.Config] = true
			order = append([]*journal{j}, order...)
		}
	}
	for _, j := range order {
		if err := a.onChangeAgain(ctx, j); err != nil {
			a.log.Error("on_change after a rollback", zap.String("config", j.Config), zap.Error(err))
		}
	}
}

// rollBack restores the files of j and the manifest before it.
func (a *Applier) rollBack(j *journal) error {
	if err := a.restore(j); err != nil {
		return err
	}
	for _, f := range j.Files {
		delete(a.known, f.Real)
	}
	a.unsettle(j.Config)
	cur, err := a.loadManifest(j.Config)
	if err != nil {
		return err
	}
	if j.Prev == nil {
		if len(cur.Owned.Users)+len(cur.Owned.Groups) == 0 {
			return a.dropManifest(j.Config)
		}
		return a.saveManifest(j.Config, manifest{Owned: cur.Owned})
	}
	m := *j.Prev
	if j.SameFiles { // the same before the run and after it
		m.Files, m.Objects = cur.Files, cur.Objects
	}
	m.Owned = cur.Owned // accounts the run created are still ccm's
	return a.saveManifest(j.Config, m)
}

// onChangeAgain runs j's on_change after its files were restored: owed
// (recorded in the manifest) until it ran.
func (a *Applier) onChangeAgain(ctx context.Context, j *journal) error {
	if len(j.OnChange) == 0 {
		return nil
	}
	m, err := a.loadManifest(j.Config)
	if err != nil {
		return err
	}
	m.OnChangePending = true
	if err := a.saveManifest(j.Config, m); err != nil {
		return err
	}
	for _, argv := range j.OnChange {
		if err := a.runCommand(ctx, command{config: j.Config, dir: j.Dir, argv: argv, timeout: j.Timeout}); err != nil {
			return fmt.Errorf("%w: %w", ErrOnChange, err)
		}
		a.log.Info("on_change ran after a rollback", zap.String("config", j.Config), zap.Strings("command", argv))
	}
	m.OnChangePending = false
	return a.saveManifest(j.Config, m)
}

// rollsBack reports whether err, a configuration's failure, fails the
// run as a transaction: every failure but a failed on_change (whose files
// were validated, and whose command is retried).
func rollsBack(err error) bool { return err != nil && !errors.Is(err, ErrOnChange) }

// RollBackInterrupted rolls back the runs a crash interrupted (a journal
// left in the state directory): their files and manifests go back to what
// the node last converged, which was validated then. The agent calls it at
// start, before it queues for the lock: restoring the state the node
// already ran is no rollout step (the lock orders changes among nodes,
// and this is none), and the state directory is the agent's alone (its
// flock). The next run converges forward as usual. It returns the
// configurations rolled back.
func (a *Applier) RollBackInterrupted() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(a.opts.StateDir, journalDir))
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(entries) == 0) {
		return nil, nil // the common start: nothing was interrupted
	}
	closeAll, err := a.open(true)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	names, err := a.interrupted()
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, n := range names {
		if err := a.recover(n); err != nil {
			errs = append(errs, fmt.Errorf("configuration %s: rolling back the run a crash interrupted: %w", n, err))
			continue
		}
		done = append(done, n)
	}
	return done, errors.Join(errs...)
}
