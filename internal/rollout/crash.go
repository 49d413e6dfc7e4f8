package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ccm-dev/ccm/internal/applier"
)

// A crash is a failure. An agent that dies during a run (out of memory, a
// signal, a bug), whatever the cause, leaves its crash file behind: the
// run writes it before it applies anything and removes it once it
// returns. The next run finds it, and counts one crash more. At the
// second crash in a row the node raises its failure record instead of
// running again, so the rollout halts with a named cause rather than a
// crash loop that holds the lock and that status calls converged.

// Crashed is the configuration a crash failure names.
const Crashed = "(crash)"

// crashesToFail is the crash that raises the failure record.
const crashesToFail = 2

// crashFile is what the file holds: the revision of the first run that
// crashed, and how many crashed in a row.
type crashFile struct {
	Revision int64 `json:"revision"`
	Crashes  int   `json:"crashes"`
}

// readCrash returns the crash file's content, or nil when there is none.
func readCrash(path string) (*crashFile, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c crashFile
	if err := json.Unmarshal(raw, &c); err != nil {
		return &crashFile{}, nil // a crash while writing it is a crash too
	}
	return &c, nil
}

// writeCrash writes c, with no fsync. What it counts is the agent's
// deaths, and a process that dies leaves the page cache to the kernel, so
// the next run finds the file. A machine that loses power mid-run may lose
// the mark, and then that crash is not counted: it was not the run's doing.
// The two fsyncs were a tenth of a one-file event (about 1 ms). The
// rename keeps a half-written file from being read as a crash count.
func writeCrash(path string, c crashFile) error {
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// crashGuard runs before a run under the lock: it counts the crash the
// crash file shows, and returns the report of a crash failure when this
// is the second in a row. Otherwise it leaves the file for this run, and
// done removes it.
func (r *Runner) crashGuard(rev int64) (failed *applier.Report, done func(), err error) {
	path := r.opts.CrashFile
	if path == "" {
		return nil, func() {}, nil
	}
	prev, err := readCrash(path)
	if err != nil {
		return nil, nil, fmt.Errorf("crash file: %w", err)
	}
	next := crashFile{Revision: rev}
	if prev != nil {
		next = crashFile{Revision: prev.Revision, Crashes: prev.Crashes + 1}
		if next.Revision == 0 {
			next.Revision = rev
		}
		r.log.Warn("the last run crashed")
	}
	remove := func() { _ = os.Remove(path) }
	if next.Crashes >= crashesToFail {
		remove()
		err := fmt.Errorf("crashed %s converging revision %d: the agent died during %d runs in a row", times(next.Crashes), next.Revision, next.Crashes)
		return &applier.Report{Revision: rev, Err: err, Outcomes: []applier.Outcome{{Config: Crashed, Result: applier.Failed, Error: err.Error()}}}, nil, nil
	}
	if err := writeCrash(path, next); err != nil {
		return nil, nil, fmt.Errorf("crash file: %w", err)
	}
	return nil, remove, nil
}

func times(n int) string {
	if n == 2 {
		return "twice"
	}
	return fmt.Sprintf("%d times", n)
}
