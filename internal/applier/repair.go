package applier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/ratelog"
	"github.com/ccm-dev/ccm/internal/render"
)

// convergedRender is what one configuration last converged to on this
// node: the definition and the output its last successful write phase
// put on disk (validated). A repair restores it, never a newer render.
type convergedRender struct {
	cfg *configs.Config
	out *render.Output
	seq uint64 // when it converged: repairs run in this order
}

// Managed is every path the node's converged renders put on disk, as real
// paths under the root, sorted: what the drift watcher watches.
type Managed struct {
	// Paths lists files and directories.
	Paths []string
	// Generation changes whenever Paths may have.
	Generation uint64
}

// repairs is the Applier's state for Repair.
type repairs struct {
	// serial is held by Run and Repair: a repair takes no cluster lock.
	serial sync.Mutex
	// converged is each configuration's last converged render; seq
	// numbers them.
	converged map[string]convergedRender
	seq       uint64
	index     managedIndex
	// moved says that the converged renders' paths may differ from the
	// index: a run that rewrote files in place publishes nothing.
	moved bool
}

// managedIndex maps a real path to the configuration that renders it.
type managedIndex struct {
	mu    sync.Mutex
	paths map[string]string // real path -> configuration
	gen   atomic.Uint64
	list  atomic.Pointer[[]string]
}

// settle records p's render as what its configuration converged to.
func (a *Applier) settle(p *Plan) {
	r := &a.repairs
	if r.converged == nil {
		r.converged = map[string]convergedRender{}
	}
	r.seq++
	if old, ok := r.converged[p.Config.Name]; !ok || !sameLivePaths(old.out, p.Output) {
		r.moved = true
	}
	r.converged[p.Config.Name] = convergedRender{cfg: p.Config, out: p.Output, seq: r.seq}
}

// sameLivePaths is slices.Equal(livePaths(a), livePaths(b)), at once for
// outputs with the same files (render.Output.SameFiles) that hold nothing
// back: their files' real paths are the same, all live.
func sameLivePaths(a, b *render.Output) bool {
	if a.SameFiles(b) && len(a.Held) == 0 && len(b.Held) == 0 &&
		slices.EqualFunc(a.Directories, b.Directories, func(x, y render.Directory) bool { return x.Real == y.Real }) {
		return true
	}
	return slices.Equal(livePaths(a), livePaths(b))
}

// livePaths lists the real paths of out's live directories and files, in
// its order.
func livePaths(out *render.Output) []string {
	paths := make([]string, 0, len(out.Directories)+len(out.Files))
	for _, d := range out.Directories {
		if out.Live(d.Object) {
			paths = append(paths, d.Real)
		}
	}
	for i := range out.Files {
		if f := &out.Files[i]; out.Live(f.Object) {
			paths = append(paths, f.Real)
		}
	}
	return paths
}

// unsettle forgets a configuration whose files are all removed.
func (a *Applier) unsettle(config string) {
	if _, ok := a.repairs.converged[config]; ok {
		a.repairs.moved = true
		delete(a.repairs.converged, config)
	}
}

// publishManaged indexes the converged renders for Managed and Repair,
// when their paths changed: an event that rewrote one file of 10,000 in
// place neither rebuilds the index nor has the drift watcher compare
// 10,000 watches.
func (a *Applier) publishManaged() {
	if !a.repairs.moved && a.repairs.index.list.Load() != nil {
		return
	}
	a.repairs.moved = false
	idx := map[string]string{}
	for name, c := range a.repairs.converged {
		for _, d := range c.out.Directories {
			if c.out.Live(d.Object) {
				idx[d.Real] = name
			}
		}
		for i := range c.out.Files {
			if f := &c.out.Files[i]; c.out.Live(f.Object) {
				idx[f.Real] = name
			}
		}
	}
	list := slices.Sorted(maps.Keys(idx))
	a.repairs.index.mu.Lock()
	a.repairs.index.paths = idx
	a.repairs.index.mu.Unlock()
	a.repairs.index.list.Store(&list)
	a.repairs.index.gen.Add(1)
}

// Managed returns the paths this node's converged renders own. Unlike the
// rest of the Applier, it is safe to call during a run.
func (a *Applier) Managed() Managed {
	m := Managed{Generation: a.repairs.index.gen.Load()}
	if l := a.repairs.index.list.Load(); l != nil {
		m.Paths = *l
	}
	return m
}

// Drift is one managed path that differed from its converged render.
type Drift struct {
	Config string
	Path   string // as the configuration names it
	Real   string
	// What says what differed: "content", "missing", "mode 0600 -> 0644",
	// "owner 0 -> 1000", "not a directory"; never the content.
	What []string
}

// RepairReport is the outcome of one Repair.
type RepairReport struct {
	// Drifted lists the paths that differed, sorted by configuration
	// order then path; with fix, each was restored unless its
	// configuration is in Failed.
	Drifted []Drift
	// Failed maps a configuration to why its repair failed (files
	// restored as a run restores them).
	Failed map[string]error
	// Ran lists the configurations whose repair changed the disk (and ran
	// validate and on_change).
	Ran []string
	// Fixed says the call was asked to restore what drifted (fix), not
	// only to report it: a caller that held a repair back reports drift.
	Fixed bool
}

// Err joins the failures, naming each configuration.
func (r *RepairReport) Err() error {
	var errs []error
	for _, n := range slices.Sorted(maps.Keys(r.Failed)) {
		errs = append(errs, fmt.Errorf("configuration %s: %w", n, r.Failed[n]))
	}
	return errors.Join(errs...)
}

// Repair compares the given real paths (and, for a directory, what it
// holds) with what their configurations last converged to, and with fix
// restores those that differ. Each configuration with drift is one
// journaled step with the rules of a run: checks, validate (restoring the
// files on failure), the manifest, on_change once. Paths that no
// converged render owns are ignored: a foreign file is never touched. A
// file (a FIFO, ...) standing where a managed directory belongs, or
// anything but a regular file where a managed file belongs, is moved
// aside (renamed to NAME.ccm-displaced-UNIXTIME-RANDOM), never deleted;
// a symlink where a managed directory belongs is refused, as a run
// refuses it.
func (a *Applier) Repair(ctx context.Context, reals []string, fix bool) *RepairReport {
	a.repairs.serial.Lock()
	defer a.repairs.serial.Unlock()
	rep := &RepairReport{Failed: map[string]error{}, Fixed: fix}
	closeAll, err := a.open(fix)
	if err != nil {
		for _, n := range a.configsOf(reals) {
			rep.Failed[n] = err
		}
		return rep
	}
	defer closeAll()
	byConfig := map[string][]string{}
	for _, r := range reals {
		for _, n := range a.ownersOf(r) {
			byConfig[n] = append(byConfig[n], r)
		}
	}
	names := slices.SortedFunc(maps.Keys(byConfig), func(x, y string) int {
		return int(a.repairs.converged[x].seq) - int(a.repairs.converged[y].seq)
	})
	for _, n := range names {
		drifted, err := a.repairOne(ctx, a.repairs.converged[n], byConfig[n], fix)
		rep.Drifted = append(rep.Drifted, drifted...)
		if err != nil {
			rep.Failed[n] = err
		} else if fix && len(drifted) > 0 {
			rep.Ran = append(rep.Ran, n)
		}
	}
	return rep // the converged renders are the same: Managed too
}

// configsOf lists the configurations that own reals.
func (a *Applier) configsOf(reals []string) []string {
	set := map[string]bool{}
	for _, r := range reals {
		for _, n := range a.ownersOf(r) {
			set[n] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// ownersOf is the configuration that owns real, or, for a directory
// (removed, replaced), every configuration owning a path under it.
func (a *Applier) ownersOf(real string) []string {
	a.repairs.index.mu.Lock()
	defer a.repairs.index.mu.Unlock()
	if n, ok := a.repairs.index.paths[real]; ok {
		return []string{n}
	}
	var out []string
	prefix := strings.TrimSuffix(real, "/") + "/"
	for p, n := range a.repairs.index.paths {
		if strings.HasPrefix(p, prefix) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// under reports whether real is one of reals or lies under one of them.
func under(real string, reals map[string]bool) bool {
	for p := real; ; p = path.Dir(p) {
		if reals[p] {
			return true
		}
		if p == "/" || p == "." || p == "" {
			return false
		}
	}
}

// repairOne plans the drifted paths of one configuration against its
// converged render and, with fix, applies that plan.
func (a *Applier) repairOne(ctx context.Context, c convergedRender, reals []string, fix bool) ([]Drift, error) {
	want := map[string]bool{}
	for _, r := range reals {
		want[r] = true
	}
	m, err := a.loadManifest(c.cfg.Name)
	if err != nil {
		return nil, err
	}
	p := &Plan{Config: c.cfg, Output: c.out, PendingOnChange: m.OnChangePending, trusting: true, manifest: m.Files, objects: m.Objects,
		digest: c.cfg.Digest, oldDigest: m.Digest}
	var drifted []Drift
	var displace []string
	for _, d := range c.out.Directories {
		if !c.out.Live(d.Object) || !under(d.Real, want) && !ancestorOf(d.Real, want) {
			continue
		}
		st, err := a.files.lstat(rel(d.Path))
		if err != nil {
			return drifted, err
		}
		if st.exists && st.mode&fs.ModeSymlink != 0 {
			// A symlink may be an operator's relocated directory: as a
			// run does, refuse to follow or replace it.
			drifted = append(drifted, Drift{Config: c.cfg.Name, Path: d.Path, Real: d.Real, What: []string{"not a directory (" + typeName(st.mode) + ")"}})
			return drifted, fmt.Errorf("%s is %s, not a directory; refusing to follow or replace it", d.Real, typeName(st.mode))
		}
		if st.exists && !st.mode.IsDir() {
			drifted = append(drifted, Drift{Config: c.cfg.Name, Path: d.Path, Real: d.Real, What: []string{"not a directory"}})
			displace = append(displace, d.Path)
			p.Dirs = append(p.Dirs, DirChange{Dir: d})
			continue
		}
		dc, err := a.planDir(d)
		if err != nil {
			return drifted, err
		}
		if dc != nil {
			what := dc.Attrs
			if !dc.Exist {
				what = []string{"missing"}
			}
			drifted = append(drifted, Drift{Config: c.cfg.Name, Path: d.Path, Real: d.Real, What: what})
			p.Dirs = append(p.Dirs, *dc)
		}
	}
	for i := range c.out.Files {
		f := &c.out.Files[i]
		if !c.out.Live(f.Object) || unresolved(f.Ownership) || !under(f.Real, want) {
			continue
		}
		ch, err := a.planFileUnder(c, f, displace)
		if err != nil {
			return drifted, err
		}
		p.checked = append(p.checked, i)
		if ch == nil {
			continue
		}
		drifted = append(drifted, Drift{Config: c.cfg.Name, Path: f.Path, Real: f.Real, What: whatDiffers(ch)})
		p.Changes = append(p.Changes, *ch)
	}
	if !fix {
		for _, d := range drifted { // found, not repaired: the next run of the configuration reads it again
			delete(a.known, d.Real)
		}
		return drifted, nil
	}
	if len(drifted) == 0 {
		return drifted, nil
	}
	for _, d := range displace {
		if err := a.displace(d); err != nil {
			return drifted, err
		}
	}
	err = a.applyPlan(ctx, p, m.Files)
	a.remember(p, err == nil || errors.Is(err, ErrOnChange))
	if err == nil {
		for _, d := range drifted {
			a.log.Warn("drift repaired", zap.String("config", d.Config), zap.String("path", d.Real), zap.Strings("differed", d.What))
		}
	}
	return drifted, err
}

// ancestorOf reports whether dir holds one of reals.
func ancestorOf(dir string, reals map[string]bool) bool {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for r := range reals {
		if strings.HasPrefix(r, prefix) {
			return true
		}
	}
	return false
}

// planFileUnder is planFile, where a file under a directory about to be
// displaced is missing.
func (a *Applier) planFileUnder(c convergedRender, f *render.File, displaced []string) (*Change, error) {
	for _, d := range displaced {
		if strings.HasPrefix(f.Path, strings.TrimSuffix(d, "/")+"/") {
			return &Change{Path: f.Path, Real: f.Real, New: f.Content, file: f, Action: Create, Content: true}, nil
		}
	}
	return a.planFile(f, fileLimit(c.cfg))
}

// whatDiffers names what of a file differed, never its content.
func whatDiffers(c *Change) []string {
	if c.displace != "" {
		return []string{"not a regular file (" + c.displace + ")"}
	}
	if c.Action == Create {
		return []string{"missing"}
	}
	var what []string
	if c.Content {
		what = append(what, "content")
	}
	return append(what, c.Attrs...)
}

// displace moves the file (not a symlink) standing at a managed
// directory's path aside in the same directory, under a name no other
// entry has, without opening it: ccm deletes only what it wrote.
func (a *Applier) displace(dir string) error {
	aside, err := a.files.moveAside(rel(dir))
	if err == nil {
		a.log.Warn("a file stood where a managed directory belongs; moved aside", zap.String("path", a.files.name(rel(dir))), zap.String("moved_to", a.files.name(aside)), ratelog.Each())
	}
	return err
}
