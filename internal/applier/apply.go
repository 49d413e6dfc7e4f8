package applier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/ratelog"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// Options configures an Applier. Root and StateDir are required.
type Options struct {
	// Root is the directory every rendered path lives under ("/" in
	// production).
	Root string
	// StateDir holds the manifests of what each configuration wrote, and
	// the journals of runs under way.
	StateDir string
	// ConfigDir is the configuration directory, where commands run (so a
	// configuration can ship its helpers as ./bin/check-something).
	ConfigDir string
	// Node is the node rendering, passed to templates and matched by when.
	Node render.Node
	// Logger receives one event per change; nil discards.
	Logger *zap.Logger
	// CheckWorkers bounds how many per-file checks run at once; 0 means
	// the number of CPUs.
	CheckWorkers int
}

// Applier plans and applies configurations on this node. It is not safe for
// concurrent use: runs are serialised by the caller (the cluster lock),
// except that Run and Repair (the drift watcher's, which takes no cluster
// lock) exclude each other, and Managed may be called at any time.
//
// An Applier remembers, between runs, the rendered output of unchanged
// objects (render.Cache), the manifests, and the files it wrote or verified
// (known). A runkind.Changed run skips reading files it knows are in
// their desired state; a full run (Run, Plan) checks every file on disk.
type Applier struct {
	opts      Options
	log       *zap.Logger
	cache     *render.Cache
	manifests map[string]manifest
	// files and state are the root and the state directory, open for the
	// duration of one public call (see open).
	files, state *tree
	known        map[string]known          // real path -> desired state last written or verified
	owners       map[string]string         // path -> the configuration that last rendered it
	ownedFrom    map[string]*render.Output // configuration -> the output own took its paths from (own)
	listed       map[string]int            // path -> how many cached manifests list it
	allLoaded    bool                      // every manifest of the state directory is cached
	progress     progress
	// pending is the accounts ("user:NAME", "group:NAME") the plans of
	// the current call create: owners resolved once they exist. snap is
	// the call's snapshot.
	pending map[string]bool
	// takenUIDs and takenGIDs are the IDs the plans of the current call
	// give (take), with the name each goes to.
	takenUIDs, takenGIDs map[int]string
	snap                 *objects.Snapshot
	// holds is the objects held in the current call, by any
	// configuration: held by all of them (hold.go).
	holds runHolds
	// run is the current Run's transaction (rollback.go); nil outside
	// Run.
	run *runTxn
	// repairs is what Repair restores, and excludes Run and Repair.
	repairs repairs
}

// known is a file ccm wrote or verified: its content (the slice the render
// produced, shared with the render cache) and the attributes asked for.
type known struct {
	content  []byte
	mode     fs.FileMode
	uid, gid int // -1: not managed
}

// New returns an Applier.
func New(opts Options) *Applier {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Applier{opts: opts, log: log, cache: render.NewCache(), manifests: map[string]manifest{}, known: map[string]known{}, owners: map[string]string{}, ownedFrom: map[string]*render.Output{}, listed: map[string]int{},
		pending: map[string]bool{}}
}

func knownOf(f *render.File) known {
	return known{content: f.Content, mode: f.Mode, uid: idOr(f.UID), gid: idOr(f.GID)}
}

// trusted reports whether f is known to be on disk exactly as rendered.
func (a *Applier) trusted(f *render.File) bool {
	k, ok := a.known[f.Real]
	if !ok || k.mode != f.Mode || k.uid != idOr(f.UID) || k.gid != idOr(f.GID) || len(k.content) != len(f.Content) {
		return false
	}
	// The render cache hands back the very slice that was written.
	if len(k.content) > 0 && &k.content[0] == &f.Content[0] {
		return true
	}
	return bytes.Equal(k.content, f.Content)
}

// remember records the outcome of applying p: every file it checked is now
// as rendered (the others were trusted already), and removed files are
// gone. After a failure nothing of p is trusted.
func (a *Applier) remember(p *Plan, ok bool) {
	if ok {
		for _, i := range p.checked {
			f := &p.Output.Files[i]
			if !p.Output.Live(f.Object) || unresolved(f.Ownership) {
				delete(a.known, f.Real)
				continue
			}
			a.known[f.Real] = knownOf(f)
		}
	} else {
		for i := range p.Output.Files {
			delete(a.known, p.Output.Files[i].Real)
		}
	}
	for _, c := range p.Changes {
		if c.removes() || !ok {
			delete(a.known, c.Real)
		}
	}
}

// ErrValidate wraps a failed validate command; the files were restored.
var ErrValidate = errors.New("validate failed, files restored")

// ErrOnChange wraps a failed on_change command; it is retried next run.
var ErrOnChange = errors.New("on_change failed, will retry next run")

// Apply converges one configuration and returns the plan it carried out.
// On error, disk is as it was before the call, except after ErrOnChange,
// where the new files stay in place.
func (a *Applier) Apply(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, claimed map[string]string) (*Plan, error) {
	closeAll, err := a.open(true)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	return a.apply(ctx, cfg, snap, &claims{paths: claimed}, runkind.Full)
}

// beginCall forgets what the last call's plans left for the plans after
// them (pending owners, holds, the IDs creations give).
func (a *Applier) beginCall() {
	a.pending, a.holds, a.takenUIDs, a.takenGIDs = map[string]bool{}, runHolds{}, nil, nil
}

func (a *Applier) apply(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, claimed *claims, kind runkind.Kind) (*Plan, error) {
	a.beginCall()
	p, err := a.plan(ctx, cfg, snap, claimed, kind)
	if err != nil {
		return nil, err
	}
	err = a.applyPlan(ctx, p, renderedPaths(p.Output))
	a.remember(p, err == nil || errors.Is(err, ErrOnChange))
	return p, err
}

// applyPlan carries out p; see Apply. files is the manifest to record
// once the plan's changes are in place and validated.
func (a *Applier) applyPlan(ctx context.Context, p *Plan, files []string) error {
	// Commands run to completion even when ctx is cancelled: a shutdown
	// finishes the current configuration rather than leave it half done.
	cmdCtx := context.WithoutCancel(ctx)
	if p.accountsFirst() {
		if err := a.applyAccounts(cmdCtx, p, false); err != nil {
			return err
		}
	}
	tx := &txn{files: a.files}
	if !p.trusting {
		// Temp files are left only by a crash, and a restarted agent
		// starts with a full run: event-driven runs need not look.
		for _, d := range dirsOf(p) {
			a.files.removeStaleTemps(d)
		}
	}
	staged, err := a.stageAll(cmdCtx, p, tx)
	defer func() {
		for _, tmp := range staged {
			a.files.remove(tmp)
		}
	}()
	if err != nil {
		tx.removeCreatedDirs()
		return err
	}
	// The staged files and the journal must both be durable before the
	// first rename, and neither before the other: their fsyncs overlap.
	synced := a.files.syncLater(slices.Collect(maps.Values(staged)))
	defer synced() // before the staged files are removed
	m := manifest{OnChangePending: p.PendingOnChange, Digest: p.digest}
	recorded, ok := a.manifests[p.Config.Name]
	same := ok && recorded.unchanged(p.Output, files)
	if same {
		m.Files, m.Objects, m.from = recorded.Files, recorded.Objects, p.Output
	} else {
		files = p.keepHeld(files)
		m.Files, m.Objects = files, p.objectsOf(files)
		if rendersExactly(p.Output, files) {
			m.from = p.Output
		}
	}
	j := a.newJournal(p, m, tx.createdDirs, same)
	if len(p.Changes) > 0 {
		if err := a.saveOriginals(p); err != nil {
			tx.removeCreatedDirs()
			return err
		}
		if err := errors.Join(a.writeJournal(j), synced()); err != nil {
			_ = a.removeJournal(j.Config) // nothing was renamed: nothing to restore
			tx.removeCreatedDirs()
			return err
		}
		crashAt("journaled")
		err := a.commitAll(cmdCtx, p, staged)
		// Renames and removals are durable once their directories are.
		for _, d := range dirsOf(p) {
			if err := a.files.syncDir(d); err != nil {
				a.log.Warn("fsync directory", zap.String("dir", d), zap.Error(err))
			}
		}
		if err != nil {
			return errors.Join(err, a.restore(j))
		}
		crashAt("renamed")
	}
	err = a.finish(cmdCtx, j, p.Changed())
	if len(p.Changes) > 0 && (err == nil || errors.Is(err, ErrOnChange)) {
		a.run.keep(j) // undone if the run fails (rollback.go)
	}
	if err == nil || errors.Is(err, ErrOnChange) { // the originals are back
		err = errors.Join(err, a.dropOriginals(p))
	}
	if err == nil {
		err = a.applyAccounts(cmdCtx, p, true)
	}
	return err
}

// accountsFirst reports whether p has accounts to create or change, or
// owners that only exist once they are: they run before the files.
func (p *Plan) accountsFirst() bool {
	for _, c := range p.Accounts {
		if !c.Removes() {
			return true
		}
	}
	for _, d := range p.Dirs {
		if unresolved(d.Dir.Ownership) {
			return true
		}
	}
	for _, c := range p.Changes {
		if c.file != nil && unresolved(c.file.Ownership) {
			return true
		}
	}
	return false
}

// stageAll creates directories, then stages and checks every changed file.
// It returns the staged temp files by change index.
func (a *Applier) stageAll(ctx context.Context, p *Plan, tx *txn) (map[int]string, error) {
	// A directory of an object that cannot be made (a customer's symlink
	// where it belongs) leaves that object out, as a failed check does:
	// one customer never fails the configuration.
	var shape []objectCheck
	for _, d := range p.Dirs {
		if err := tx.ensureDir(d.Dir.Path, d.Dir.Mode, d.Dir.Ownership, true); err != nil {
			if d.Dir.Object == "" {
				return nil, err
			}
			shape = addShape(shape, d.Dir.Object, err)
		}
	}
	defer func() {
		for _, m := range tx.moved {
			a.log.Warn("a file stood where a directory belongs; moved aside", zap.String("config", p.Config.Name), zap.String("path", a.files.name(rel(m[0]))), zap.String("moved_to", a.files.name(m[1])), ratelog.Each())
		}
		tx.moved = nil
	}()
	staged := map[int]string{}
	var failed []objectCheck
	for i := range p.Changes {
		c := &p.Changes[i]
		if c.removes() || !c.Content && !c.rewrite || (c.file != nil && c.file.Object != "" && p.Output.Held[c.file.Object]) {
			continue
		}
		if slices.ContainsFunc(shape, func(o objectCheck) bool { return o.object == c.file.Object }) {
			continue
		}
		if err := tx.ensureDir(path.Dir(c.Path), configs.DefaultDirMode, configs.Ownership{}, false); err != nil {
			if c.file.Object == "" {
				return staged, err
			}
			shape = addShape(shape, c.file.Object, err)
			continue
		}
		uid, gid := c.file.UID, c.file.GID
		if c.old.exists { // keep the owner of a file whose owner is not managed
			uid, gid = keep(uid, c.old.uid), keep(gid, c.old.gid)
		}
		tmp, err := a.files.stage(rel(c.Path), c.New, c.file.Mode, uid, gid, false)
		if err != nil {
			return staged, err
		}
		staged[i] = tmp
		a.progress.mark()
	}
	names := make(map[int]string, len(staged))
	for i, tmp := range staged {
		names[i] = a.files.name(tmp)
	}
	errs := a.checkStaged(ctx, p, names)
	// A check the fence or a stop killed refused nothing: no object is
	// quarantined for the node's lost lock.
	if cause := context.Cause(ctx); cause != nil && len(errs) > 0 {
		return staged, cause
	}
	for _, i := range slices.Sorted(maps.Keys(errs)) {
		if errors.Is(errs[i], ErrFenced) {
			return staged, errs[i]
		}
	}
	for _, i := range slices.Sorted(maps.Keys(errs)) {
		if p.Changes[i].file.Object == "" {
			return staged, errs[i]
		}
		failed = append(failed, objectCheck{p.Changes[i].file.Object, errs[i]})
	}
	if err := everyCheckFailed(failed, p.Output.Files); err != nil {
		return staged, err
	}
	failed = append(failed, shape...)
	if len(failed) > 0 {
		staged = a.dropFailed(p, staged, failed)
	}
	return staged, nil // applyPlan makes them durable
}

// addShape adds an object whose directory cannot be made, once.
func addShape(shape []objectCheck, object string, err error) []objectCheck {
	if slices.ContainsFunc(shape, func(o objectCheck) bool { return o.object == object }) {
		return shape
	}
	return append(shape, objectCheck{object, err})
}

// objectCheck is a for_each file whose check failed: its object is
// quarantined, and the rest of the configuration goes on.
type objectCheck struct {
	object string
	err    error
}

// everyCheckFailed fails the configuration when the checks failed for
// every object whose files have a check, at least two (a new release's
// check that refuses every vhost): the configuration is at fault, not its
// objects, as render.ErrEveryObject says of templates. Two customers' bad
// objects among more are quarantined, whatever the run changed.
func everyCheckFailed(failed []objectCheck, files []render.File) error {
	bad := map[string]bool{}
	for _, f := range failed {
		bad[f.object] = true
	}
	if len(bad) < 2 {
		return nil
	}
	checked := map[string]bool{}
	for _, f := range files {
		if (f.Check != nil || f.CheckAll != nil) && f.Object != "" {
			checked[f.Object] = true
		}
	}
	if len(bad) < len(checked) {
		return nil
	}
	return fmt.Errorf("check %w whose files have one (%d), so the configuration is at fault: %w", render.ErrEveryObject, len(bad), failed[0].err)
}

// dropFailed leaves the objects whose check failed out of p, removes
// their staged copies, and returns staged indexed by p's new changes.
func (a *Applier) dropFailed(p *Plan, staged map[int]string, failed []objectCheck) map[int]string {
	byPath := map[string]string{}
	for i, tmp := range staged {
		byPath[p.Changes[i].Path] = tmp
	}
	for _, f := range failed {
		a.leaveOut(p, f.object, f.err)
	}
	out := map[int]string{}
	for i := range p.Changes {
		if tmp, ok := byPath[p.Changes[i].Path]; ok {
			out[i] = tmp
			delete(byPath, p.Changes[i].Path)
		}
	}
	for _, tmp := range byPath { // the files of the objects left out
		a.files.remove(tmp)
	}
	return out
}

// commitAll renames the staged files into place, removes stale files and
// fixes attributes, in path order, each after the run's fence. Each
// staged file it renames leaves staged.
func (a *Applier) commitAll(ctx context.Context, p *Plan, staged map[int]string) error {
	for i := range p.Changes {
		c := &p.Changes[i]
		if err := fenced(ctx, "writing "+c.Path); err != nil {
			return err
		}
		if err := a.files.apply(c, staged[i]); err != nil {
			return err
		}
		delete(staged, i)
		fields := []zap.Field{zap.String("config", p.Config.Name), zap.String("action", string(c.Action)), zap.String("path", c.Path)}
		if len(c.Attrs) > 0 {
			fields = append(fields, zap.Strings("attrs", c.Attrs))
		}
		if c.aside != "" {
			a.log.Warn("a managed file's path held "+c.displace+"; moved aside", zap.String("config", p.Config.Name), zap.String("path", c.Real), zap.String("moved_to", a.files.name(c.aside)), ratelog.Each())
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
	paths := make([]string, 0, len(out.Files))
	for _, f := range out.Files {
		if out.Live(f.Object) {
			paths = append(paths, f.Path)
		}
	}
	return paths
}

// txn records the directories a run created, so that they can be removed
// again on failure.
type txn struct {
	files       *tree
	createdDirs []string        // as the configuration names them
	present     map[string]bool // directories known to exist: 10,000 files in one directory stat it once
	moved       [][2]string     // a non-directory moved aside: its path, where to
}

// ensureDir creates dir (a configuration's absolute path) and missing
// parents with the default mode. With fix, an existing dir gets mode and
// own too; without, it is left alone.
func (t *txn) ensureDir(dir string, mode fs.FileMode, own configs.Ownership, fix bool) error {
	if dir == "/" || (!fix && t.present[dir]) {
		return nil
	}
	st, err := t.files.lstat(rel(dir))
	if err != nil {
		return err
	}
	if st.exists {
		if st.mode&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symlink; refusing to follow it", t.files.name(rel(dir)))
		}
		if !st.mode.IsDir() {
			// A file (a FIFO, a socket) standing where a directory
			// belongs is moved aside, never deleted nor written through.
			aside, err := t.files.moveAside(rel(dir))
			if err != nil {
				return fmt.Errorf("%s exists and is not a directory; moving it aside: %w", t.files.name(rel(dir)), err)
			}
			t.moved = append(t.moved, [2]string{dir, aside})
			return t.ensureDir(dir, mode, own, fix)
		}
		t.markPresent(dir)
		if !fix || len(attrChanges(st, mode, own)) == 0 {
			return nil
		}
		return t.files.setDirAttrs(rel(dir), mode, own)
	}
	if err := t.ensureDir(path.Dir(dir), configs.DefaultDirMode, configs.Ownership{}, false); err != nil {
		return err
	}
	if err := t.files.mkdir(rel(dir), mode.Perm()); err != nil {
		return fmt.Errorf("mkdir %s: %w", t.files.name(rel(dir)), err)
	}
	t.createdDirs = append(t.createdDirs, dir)
	t.markPresent(dir)
	return t.files.setDirAttrs(rel(dir), mode, own)
}

func (t *txn) markPresent(dir string) {
	if t.present == nil {
		t.present = map[string]bool{}
	}
	t.present[dir] = true
}

// apply carries out one change; tmp is its staged file, if any.
func (t *tree) apply(c *Change, tmp string) error {
	var err error
	switch {
	case !c.modifies():
	case c.Action == Remove:
		err = t.remove(rel(c.Path))
	case c.Action == Restore:
		o := c.orig
		err = t.writeAtomic(rel(c.Path), o.Content, o.Mode, &o.UID, &o.GID)
	case tmp != "":
		if c.displace != "" {
			c.aside, err = t.moveAside(rel(c.Path))
			if errors.Is(err, fs.ErrNotExist) {
				c.aside, err = "", nil // gone meanwhile
			}
			if err != nil {
				break
			}
		}
		err = t.commit(tmp, rel(c.Path))
	default:
		err = t.setFileAttrs(rel(c.Path), c.file.Mode, c.file.Ownership)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", c.Action, c.Path, err)
	}
	return nil
}

// removeCreatedDirs removes the directories a run created, if empty, after
// the run failed before anything was renamed.
func (t *txn) removeCreatedDirs() {
	for i := len(t.createdDirs) - 1; i >= 0; i-- {
		t.files.remove(rel(t.createdDirs[i])) // only if empty
	}
}

// open opens the root and the state directory for one public call, and
// reads every manifest once: each
// call opens them afresh, so a state directory deleted in between is
// created again. A plan (write false) creates nothing: without a state
// directory, nothing is recorded. It returns the function that closes
// them.
func (a *Applier) open(write bool) (func(), error) {
	files, err := openTree(a.opts.Root, 0)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	var state *tree
	switch _, serr := os.Stat(a.opts.StateDir); {
	case write || serr == nil:
		perm := fs.FileMode(0)
		if write {
			perm = 0o700
		}
		if state, err = openTree(a.opts.StateDir, perm); err != nil {
			files.close()
			return nil, fmt.Errorf("state: %w", err)
		}
	case !errors.Is(serr, fs.ErrNotExist):
		files.close()
		return nil, fmt.Errorf("state: %w", serr)
	}
	a.files, a.state = files, state
	a.loadManifests() // which files ccm wrote: every call plans
	return func() {
		files.close()
		if state != nil {
			state.close()
		}
		a.files, a.state = nil, nil
	}, nil
}
