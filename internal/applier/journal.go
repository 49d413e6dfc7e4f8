package applier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ccm-dev/ccm/internal/accounts"

	"go.uber.org/zap"
)

// journal is the durable intent of one configuration's run: written to the
// state directory before the first rename, removed once the manifest
// records the outcome. A run that a crash interrupted is finished from it
// at the next run: validate, restore on failure, then on_change. So after a
// change on_change runs at least once, and a rejected file never stays.
type journal struct {
	Config string `json:"config"`
	// Dir is where its commands run: the configuration's directory.
	Dir string `json:"dir,omitempty"`
	// Root is the --root the paths were written under; a journal for
	// another root is refused, never replayed.
	Root     string        `json:"root"`
	Validate []string      `json:"validate,omitempty"`
	OnChange [][]string    `json:"on_change,omitempty"`
	Timeout  time.Duration `json:"timeout"`
	// Manifest is what the state directory records once validate passed.
	Manifest manifest `json:"manifest"`
	// SameFiles says that the files of the manifest and of Prev are the
	// ones the state directory records already, and are left out of both:
	// a run that changes one of 10,000 files does not write 10,000 paths,
	// durably, three times.
	SameFiles bool `json:"same_files,omitempty"`
	// Files is the old state of every path the run changes.
	Files []journalFile `json:"files"`
	// Dirs are the directories the run created, as the configuration
	// names them (removed if empty on restore).
	Dirs []string `json:"created_dirs,omitempty"`
	// Restoring is set once a restore has begun: a crash during it is
	// finished by restoring, never by validating a half-restored tree.
	Restoring bool `json:"restoring,omitempty"`
	// Prev is the configuration's manifest before the run (nil: none),
	// put back when the run is rolled back.
	Prev *manifest `json:"prev,omitempty"`
}

// journalFile is the state of one path before the run.
type journalFile struct {
	Path    string      `json:"path"` // as the configuration names it, under Root
	Real    string      `json:"real"` // on disk, for messages
	Existed bool        `json:"existed"`
	Content []byte      `json:"content,omitempty"`
	Mode    fs.FileMode `json:"mode,omitempty"`
	UID     int         `json:"uid"`
	GID     int         `json:"gid"`
}

// journalDir holds the journals, in the state directory.
const journalDir = "journal"

func journalPath(config string) string { return path.Join(journalDir, config+".json") }

// newJournal records what applying p would change and then do. same says
// that m's files are the recorded manifest's (manifest.unchanged).
func (a *Applier) newJournal(p *Plan, m manifest, dirs []string, same bool) *journal {
	cfg := p.Config
	j := &journal{Config: cfg.Name, Dir: cfg.Dir(), Root: a.opts.Root, Validate: cfg.Validate, Timeout: cfg.Timeout, Manifest: m, Dirs: dirs}
	if prev, ok := a.manifests[cfg.Name]; ok {
		prev.Owned = accounts.Owned{} // a rollback keeps the accounts as they are then
		j.Prev = &prev
		if same || len(m.Files) > 0 && slices.Equal(prev.Files, m.Files) && maps.Equal(prev.Objects, m.Objects) {
			// Both manifests list what the state directory lists, before
			// the run and after it alike: neither is written twice.
			j.Manifest.Files, j.Manifest.Objects, j.SameFiles = nil, nil, true
			j.Prev.Files, j.Prev.Objects = nil, nil
		}
	}
	for _, c := range cfg.OnChange {
		j.OnChange = append(j.OnChange, c)
	}
	for _, c := range p.Changes {
		j.Files = append(j.Files, journalFile{Path: c.Path, Real: c.Real, Existed: c.old.exists && !c.dropOld,
			Content: c.Old, Mode: c.old.mode, UID: c.old.uid, GID: c.old.gid})
	}
	return j
}

// writeJournal makes the journal durable.
func (a *Applier) writeJournal(j *journal) error {
	return a.writeState(journalPath(j.Config), j)
}

// writeState writes v as JSON to p in the state directory, durably, with
// only root able to read it. It is not indented: a journal carries the old
// content of every file it changes, and indenting it was a tenth of an
// event's cost with one large file (jq reads it fine).
func (a *Applier) writeState(p string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := a.state.mkdirAll(path.Dir(p), 0o700); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := a.state.writeAtomic(p, append(raw, '\n'), 0o600, nil, nil); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// removeJournal drops the journal once the manifest records the outcome.
// The removal is not fsynced: if a crash undoes it, the next run finishes
// the journal again, which runs validate and on_change once more (at least
// once, as promised), and every run saves an fsync.
func (a *Applier) removeJournal(config string) error {
	if err := a.state.remove(journalPath(config)); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// restore puts every path of j back as it was, byte for byte with its mode
// and owner, and removes the directories the run created if they are
// empty. It is idempotent, so a crash during it is finished by running it
// again.
func (a *Applier) restore(j *journal) error {
	if !j.Restoring {
		j.Restoring = true
		if err := a.writeJournal(j); err != nil {
			return err
		}
	}
	var errs []error
	for i := len(j.Files) - 1; i >= 0; i-- {
		f := j.Files[i]
		if err := a.restoreFile(f); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", f.Path, err))
			continue
		}
		a.log.Info("restored", zap.String("config", j.Config), zap.String("path", f.Path))
	}
	for i := len(j.Dirs) - 1; i >= 0; i-- {
		a.files.remove(rel(j.Dirs[i])) // only if empty
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // the journal stays: the next run restores again
	}
	return a.removeJournal(j.Config)
}

// restoreFile puts one path back as the journal recorded it.
func (a *Applier) restoreFile(f journalFile) error {
	if f.Existed {
		return a.files.writeAtomic(rel(f.Path), f.Content, f.Mode, &f.UID, &f.GID)
	}
	return a.files.remove(rel(f.Path))
}

// finish carries a journaled run to its end once its files are in place:
// validate (restoring every file on failure), record the manifest, run
// on_change. A crashed run is finished by the same function.
func (a *Applier) finish(ctx context.Context, j *journal, changed bool) error {
	if j.Restoring {
		return fmt.Errorf("%w: an interrupted restore was finished: %w", ErrValidate, a.restore(j))
	}
	if changed && j.Validate != nil {
		if err := fenced(ctx, "validate"); err != nil {
			return errors.Join(err, a.restore(j))
		}
		if err := a.runCommand(ctx, command{config: j.Config, dir: j.Dir, argv: j.Validate, timeout: j.Timeout}); err != nil {
			return fmt.Errorf("%w: %w", ErrValidate, errors.Join(err, a.restore(j)))
		}
	}
	crashAt("validated")
	m := j.Manifest
	recorded, err := a.loadManifest(j.Config)
	if err != nil {
		return errors.Join(err, a.restore(j))
	}
	if j.SameFiles {
		m.Files, m.Objects = recorded.Files, recorded.Objects
	}
	m.Owned = recorded.Owned // the accounts record themselves as they run
	m.OnChangePending = m.OnChangePending || (changed && len(j.OnChange) > 0)
	if err := a.saveManifest(j.Config, m); err != nil {
		return errors.Join(err, a.restore(j))
	}
	if err := a.removeJournal(j.Config); err != nil {
		return err
	}
	if !m.OnChangePending {
		return nil
	}
	for _, argv := range j.OnChange {
		// Past validate the files stay: the on_change is still owed, and
		// the next run that holds the lock runs it.
		if err := fenced(ctx, "on_change"); err != nil {
			return fmt.Errorf("%w: %w", ErrOnChange, err)
		}
		if err := a.runCommand(ctx, command{config: j.Config, dir: j.Dir, argv: argv, timeout: j.Timeout}); err != nil {
			return fmt.Errorf("%w: %w", ErrOnChange, err)
		}
		a.log.Info("on_change ran", zap.String("config", j.Config), zap.Strings("command", argv))
	}
	m.OnChangePending = false
	return a.saveManifest(j.Config, m)
}

// interrupted lists the configurations whose run a crash interrupted.
func (a *Applier) interrupted() ([]string, error) {
	entries, err := a.state.readDir(journalDir)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && e.Type().IsRegular() {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// recover rolls back the run of config that a crash interrupted: its
// files, and its manifest, go back to what the node last converged.
func (a *Applier) recover(config string) error {
	name := a.state.name(journalPath(config))
	raw, err := a.state.readFile(journalPath(config))
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	j := &journal{}
	if err := json.Unmarshal(raw, j); err != nil {
		return fmt.Errorf("state: journal %s: %w", name, err)
	}
	if j.Root != a.opts.Root {
		return fmt.Errorf("state: journal %s was written for root %s, not %s; refusing to replay it", name, j.Root, a.opts.Root)
	}
	a.log.Warn("rolling back a run a crash interrupted", zap.String("config", config), zap.Int("files", len(j.Files)))
	return a.rollBack(j)
}
