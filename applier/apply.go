package applier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/configs"
	"github.com/ccm-dev/ccm/objects"
	"github.com/ccm-dev/ccm/render"
)

// Options configures an Applier. Root and StateDir are required.
type Options struct {
	// Root is the directory every rendered path lives under ("/" in
	// production).
	Root string
	// StateDir holds the manifests of what each configuration wrote.
	StateDir string
	// Node is the node rendering, passed to templates and matched by when.
	Node render.Node
	// Logger receives one event per change; nil discards.
	Logger *zap.Logger
}

// Applier plans and applies configurations on this node. It is not safe for
// concurrent use: runs are serialised by the caller (the cluster lock).
type Applier struct {
	opts Options
	log  *zap.Logger
}

// New returns an Applier.
func New(opts Options) *Applier {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Applier{opts: opts, log: log}
}

// ErrValidate wraps a failed validate command; the files were restored.
var ErrValidate = errors.New("validate failed, files restored")

// ErrOnChange wraps a failed on_change command; it is retried next run.
var ErrOnChange = errors.New("on_change failed, will retry next run")

// Apply converges one configuration and returns the plan it carried out.
// On error, disk is as it was before the call, except after ErrOnChange,
// where the new files stay in place.
func (a *Applier) Apply(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, claimed map[string]string) (*Plan, error) {
	p, err := a.Plan(cfg, snap, claimed)
	if err != nil {
		return nil, err
	}
	// Commands run to completion even when ctx is cancelled: a shutdown
	// finishes the current configuration rather than leave it half done.
	cmdCtx := context.WithoutCancel(ctx)
	tx := &txn{log: a.log}
	if err := a.write(cmdCtx, p, tx); err != nil {
		return p, errors.Join(err, tx.rollback())
	}
	if p.Changed() && cfg.Validate != nil {
		if err := runCommand(cmdCtx, cfg.Validate, cfg.Timeout); err != nil {
			return p, fmt.Errorf("%w: %w", ErrValidate, errors.Join(err, tx.rollback()))
		}
	}
	m := manifest{Files: renderedPaths(p.Output), OnChangePending: (p.PendingOnChange || p.Changed()) && len(cfg.OnChange) > 0}
	if err := a.saveManifest(cfg.Name, m); err != nil {
		return p, err
	}
	if !m.OnChangePending {
		return p, nil
	}
	for _, cmd := range cfg.OnChange {
		if err := runCommand(cmdCtx, cmd, cfg.Timeout); err != nil {
			return p, fmt.Errorf("%w: %w", ErrOnChange, err)
		}
		a.log.Info("on_change ran", zap.String("config", cfg.Name), zap.Strings("command", cmd))
	}
	m.OnChangePending = false
	return p, a.saveManifest(cfg.Name, m)
}

// write creates directories, stages and checks every changed file, and only
// then commits them all and prunes.
func (a *Applier) write(ctx context.Context, p *Plan, tx *txn) error {
	for _, d := range dirsOf(p) {
		removeStaleTemps(d)
	}
	for _, d := range p.Dirs {
		if err := tx.ensureDir(d.Dir.Real, d.Dir.Mode, d.Dir.Ownership, true); err != nil {
			return err
		}
	}
	staged := map[int]string{}
	defer func() {
		for _, tmp := range staged {
			os.Remove(tmp)
		}
	}()
	for i := range p.Changes {
		c := &p.Changes[i]
		if c.Action == Remove || !c.Content {
			continue
		}
		if err := tx.ensureDir(filepath.Dir(c.Real), configs.DefaultDirMode, configs.Ownership{}, false); err != nil {
			return err
		}
		uid, gid := c.file.UID, c.file.GID
		if c.old.exists { // keep the owner of a file whose owner is not managed
			uid, gid = keep(uid, c.old.uid), keep(gid, c.old.gid)
		}
		tmp, err := stage(c.Real, c.New, c.file.Mode, uid, gid)
		if err != nil {
			return err
		}
		staged[i] = tmp
		if c.file.Check != nil {
			if err := runCommand(ctx, c.file.Check.Expand(tmp, c.Real), p.Config.Timeout); err != nil {
				return fmt.Errorf("check %s: %w", c.Path, err)
			}
		}
	}
	for i := range p.Changes {
		if err := tx.apply(&p.Changes[i], staged[i]); err != nil {
			return err
		}
		delete(staged, i)
		c := &p.Changes[i]
		fields := []zap.Field{zap.String("config", p.Config.Name), zap.String("action", string(c.Action)), zap.String("path", c.Path)}
		if len(c.Attrs) > 0 {
			fields = append(fields, zap.Strings("attrs", c.Attrs))
		}
		a.log.Info("file", fields...)
	}
	return nil
}

func keep(id *int, old int) *int {
	if id != nil {
		return id
	}
	return &old
}

func renderedPaths(out *render.Output) []string {
	paths := make([]string, len(out.Files))
	for i, f := range out.Files {
		paths[i] = f.Path
	}
	return paths
}

// txn records what a run changed so that it can be undone.
type txn struct {
	log         *zap.Logger
	createdDirs []string
	done        []*Change
}

// ensureDir creates dir (and missing parents with the default mode). With
// fix, an existing dir gets mode and own too; without, it is left alone.
func (t *txn) ensureDir(dir string, mode fs.FileMode, own configs.Ownership, fix bool) error {
	st, err := stat(dir)
	if err != nil {
		return err
	}
	if st.exists {
		if !st.mode.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		if !fix || len(attrChanges(st, mode, own)) == 0 {
			return nil
		}
		return setAttrs(dir, mode, own)
	}
	if err := t.ensureDir(filepath.Dir(dir), configs.DefaultDirMode, configs.Ownership{}, false); err != nil {
		return err
	}
	if err := os.Mkdir(dir, mode.Perm()); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	t.createdDirs = append(t.createdDirs, dir)
	return setAttrs(dir, mode, own)
}

func setAttrs(path string, mode fs.FileMode, own configs.Ownership) error {
	if own.UID != nil || own.GID != nil {
		if err := os.Lchown(path, idOr(own.UID), idOr(own.GID)); err != nil {
			return err
		}
	}
	return os.Chmod(path, mode)
}

// apply carries out one change; tmp is its staged file, if any.
func (t *txn) apply(c *Change, tmp string) error {
	var err error
	switch {
	case c.Action == Remove:
		if err = os.Remove(c.Real); err == nil {
			err = syncDir(filepath.Dir(c.Real))
		}
	case tmp != "":
		err = commit(tmp, c.Real)
	default:
		err = setAttrs(c.Real, c.file.Mode, c.file.Ownership)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", c.Action, c.Path, err)
	}
	t.done = append(t.done, c)
	return nil
}

// rollback restores every changed file byte for byte and removes the
// directories the run created.
func (t *txn) rollback() error {
	var errs []error
	for i := len(t.done) - 1; i >= 0; i-- {
		c := t.done[i]
		var err error
		if c.Action == Create {
			err = os.Remove(c.Real)
		} else {
			err = writeAtomic(c.Real, c.Old, c.old.mode, &c.old.uid, &c.old.gid)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rollback %s: %w", c.Path, err))
			continue
		}
		t.log.Info("rolled back", zap.String("path", c.Path), zap.String("action", string(c.Action)))
	}
	for i := len(t.createdDirs) - 1; i >= 0; i-- {
		os.Remove(t.createdDirs[i]) // only if empty
	}
	t.done, t.createdDirs = nil, nil
	return errors.Join(errs...)
}
