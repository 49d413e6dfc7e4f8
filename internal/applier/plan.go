package applier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// Action is what a change does to a path.
type Action string

// The actions of a Change.
const (
	Create Action = "create"
	Update Action = "update"
	Remove Action = "remove"
	// Adopt is an update of a file ccm did not write: its original bytes,
	// mode and owner are kept in the state directory first.
	Adopt Action = "adopt"
	// Restore puts an adopted file's original back where a file ccm wrote
	// would be removed.
	Restore Action = "restore"
)

// state is a path's mode and owner on disk.
type state struct {
	exists   bool
	mode     fs.FileMode
	uid, gid int
	size     int64
	nlink    uint64
}

// Change is one file that converging would create, update or remove.
type Change struct {
	Action Action
	Path   string // as the configuration names it
	Real   string // on disk, under the root
	Old    []byte
	New    []byte
	// Content reports whether the bytes differ; an Update may change only
	// attributes.
	Content bool
	// Attrs describes mode and owner changes, e.g. "mode 0600 -> 0644".
	Attrs []string
	old   state
	file  *render.File
	orig  *original // Restore: what is put back
	// dropOld: the old file is larger than max_file_size; its content is
	// not read nor journaled, and a rollback does not put it back.
	dropOld bool
	// rewrite: only owner or mode differ, and a fresh copy is renamed
	// over the file rather than the inode changed in place.
	rewrite bool
	// displace names what stands at the path instead of a regular file
	// ("a FIFO"); it is moved aside before the new file is renamed in.
	displace string
	// aside is where it was moved.
	aside string
}

// modifies reports whether carrying out the change touches the disk (an
// adoption of a file that already matches only records its original).
func (c *Change) modifies() bool {
	return c.Action != Adopt || c.Content || len(c.Attrs) > 0
}

// removes reports whether the change takes away a file ccm wrote.
func (c *Change) removes() bool { return c.Action == Remove || c.Action == Restore }

// Diff returns the unified diff of the change's content.
func (c *Change) Diff() string {
	if !c.Content {
		return ""
	}
	if c.dropOld {
		return fmt.Sprintf("%s: the file on disk (%d bytes) is larger than max_file_size; not read, it is replaced\n", render.Escape(c.Path), c.old.size)
	}
	return render.Unified(c.Path, c.Old, c.New, c.Action != Create, c.Action != Remove)
}

// DirChange is a directory that converging would create or fix.
type DirChange struct {
	Dir   render.Directory
	Exist bool
	Attrs []string
}

// Plan is what converging one configuration would do.
type Plan struct {
	Config  *configs.Config
	Output  *render.Output
	Dirs    []DirChange
	Changes []Change // sorted by path
	// Accounts are the users and groups to create, change or remove, in
	// the order they run.
	Accounts []accounts.Change
	// declared is the configuration's accounts with the records of this
	// run's declarers (accounts.Owned.Declared), as the plan saw them,
	// before any object was left out: applyAccounts saves these.
	declared accounts.Owned
	// HeldBy maps an object held because another configuration of the run
	// held it to that configuration (hold.go).
	HeldBy map[string]string
	// PendingOnChange is set when an earlier run's on_change failed.
	PendingOnChange bool
	// Redefined is set when the configuration's definition changed since
	// it last converged here: its validate and on_change run once, even
	// when every file already matches.
	Redefined bool
	// Orphan marks the plan of a configuration this node no longer runs
	// (deleted, or its when no longer matches): it only removes files.
	Orphan   bool
	trusting bool              // planned by an event-driven run
	checked  []int             // indexes of Output.Files checked against the disk
	manifest []string          // the files the configuration owned before
	objects  map[string]string // the manifest's path -> object
	digest   string            // the definition to record once applied
	// oldDigest is the definition the manifest recorded.
	oldDigest string
}

// redefined reports whether cfg is not the definition that last converged
// here. A manifest without a digest (an earlier ccm) records one without
// running anything, and an orphan has no definition.
func redefined(m manifest, cfg *configs.Config) bool {
	return m.Digest != "" && cfg.Digest != "" && m.Digest != cfg.Digest
}

// removals returns the part of p that removes files, or nil if none.
func (p *Plan) removals() *Plan {
	// The removals record the old definition: the new one is recorded by
	// the writes, whose validate and on_change it owes.
	rm := &Plan{Config: p.Config, Output: p.Output, trusting: p.trusting, manifest: p.manifest, objects: p.objects, digest: p.oldDigest}
	for _, c := range p.Changes {
		if c.removes() {
			rm.Changes = append(rm.Changes, c)
		}
	}
	for _, c := range p.Accounts {
		if c.Removes() {
			rm.Accounts = append(rm.Accounts, c)
		}
	}
	if len(rm.Changes)+len(rm.Accounts) == 0 {
		return nil
	}
	return rm
}

// writes returns the part of p that creates and updates.
func (p *Plan) writes() *Plan {
	w := *p
	w.Changes = slices.DeleteFunc(slices.Clone(p.Changes), func(c Change) bool { return c.removes() })
	w.Accounts = slices.DeleteFunc(slices.Clone(p.Accounts), func(c accounts.Change) bool { return c.Removes() })
	return &w
}

// kept is the manifest once the removals are done: what the configuration
// owned before and still renders, or keeps for a quarantined object.
func (p *Plan) kept() []string {
	return slices.DeleteFunc(slices.Clone(p.manifest), func(path string) bool { return !p.Output.Has(path) && !p.held(path) })
}

// held reports whether path is a file of an object left out of p, which
// stays as it is.
func (p *Plan) held(path string) bool {
	o, ok := p.objects[path]
	return ok && p.Output.Held[o]
}

// keepHeld returns the manifest files once p is applied: files, without
// the files of objects left out that the configuration did not own
// before, and with those it did.
func (p *Plan) keepHeld(files []string) []string {
	if len(p.Output.Held) == 0 {
		return files
	}
	old := map[string]bool{}
	for _, path := range p.manifest {
		old[path] = true
	}
	var out []string
	seen := map[string]bool{}
	for _, path := range files {
		if p.Output.Has(path) || old[path] {
			out = append(out, path)
			seen[path] = true
		}
	}
	for _, path := range p.manifest {
		if !seen[path] && p.held(path) {
			out = append(out, path)
		}
	}
	slices.Sort(out)
	return out
}

// objectsOf maps each of files that belongs to a for_each object to it:
// as rendered now, or as recorded for a file kept for a quarantined one.
func (p *Plan) objectsOf(files []string) map[string]string {
	rendered := make(map[string]string, len(p.Output.Files)) // sized: 10,000 files rehashed twice was a tenth of an event
	for i := range p.Output.Files {
		if f := &p.Output.Files[i]; f.Object != "" && p.Output.Live(f.Object) {
			rendered[f.Path] = f.Object
		}
	}
	var out map[string]string
	for _, path := range files {
		o, ok := rendered[path]
		if !ok {
			o, ok = p.objects[path]
		}
		if ok {
			if out == nil {
				out = make(map[string]string, len(files))
			}
			out[path] = o
		}
	}
	return out
}

// stale lists the files p removes.
func (p *Plan) stale() []string {
	var paths []string
	for _, c := range p.Changes {
		if c.removes() {
			paths = append(paths, c.Path)
		}
	}
	return paths
}

// Changed reports whether applying the plan would change anything on disk.
func (p *Plan) Changed() bool {
	if len(p.Dirs) > 0 || len(p.Accounts) > 0 || p.Redefined {
		return true
	}
	for i := range p.Changes {
		if p.Changes[i].modifies() {
			return true
		}
	}
	return false
}

// Counts returns how many paths would be created, changed and removed.
func (p *Plan) Counts() (create, change, remove int) {
	for _, d := range p.Dirs {
		if d.Exist {
			change++
		} else {
			create++
		}
	}
	for _, c := range p.Accounts {
		switch c.Op {
		case accounts.Create:
			create++
		case accounts.Remove:
			remove++
		default:
			change++
		}
	}
	for _, c := range p.Changes {
		switch {
		case !c.modifies():
		case c.Action == Create:
			create++
		case c.removes():
			remove++
		default:
			change++
		}
	}
	return create, change, remove
}

// Plan renders cfg and compares it with the disk. claimed lists paths that
// other configurations of the same run render; they are never pruned here.
func (a *Applier) Plan(cfg *configs.Config, snap *objects.Snapshot, claimed map[string]string) (*Plan, error) {
	closeAll, err := a.open(false)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	a.beginCall()
	return a.plan(context.Background(), cfg, snap, &claims{paths: claimed}, runkind.Full)
}

// plan is Plan; in a runkind.Changed run, files known to be in their desired state are
// not read from disk, and unchanged objects are not rendered again.
func (a *Applier) plan(ctx context.Context, cfg *configs.Config, snap *objects.Snapshot, claimed *claims, kind runkind.Kind) (*Plan, error) {
	a.snap = snap // the revisions of the objects it quarantines
	out, err := a.cache.Render(ctx, cfg, snap, a.opts.Node, a.opts.Root, kind)
	if err != nil {
		return nil, err
	}
	m, err := a.loadManifest(cfg.Name)
	if err != nil {
		return nil, err
	}
	p := &Plan{Config: cfg, Output: out, PendingOnChange: m.OnChangePending, trusting: kind == runkind.Changed, manifest: m.Files, objects: m.Objects,
		Redefined: redefined(m, cfg), digest: cfg.Digest, oldDigest: m.Digest}
	if err := a.planAccounts(p, m); err != nil {
		return nil, err
	}
	taken := map[string]error{} // objects that would take what is not ccm's
	var takenOrder []string
	take := func(object string, err error) {
		if _, ok := taken[object]; !ok {
			taken[object], takenOrder = err, append(takenOrder, object)
		}
	}
	ccmUID := a.ccmUIDs()
	for _, d := range out.Directories {
		if !out.Live(d.Object) {
			continue
		}
		dc, err := a.planDir(d)
		if err != nil {
			return nil, err
		}
		if dc != nil && d.Object != "" {
			if err := a.mayTakeDir(dc, ccmUID); err != nil {
				take(d.Object, err)
				continue
			}
		}
		if dc != nil {
			p.Dirs = append(p.Dirs, *dc)
		}
	}
	for i := range out.Files {
		f := &out.Files[i]
		if !out.Live(f.Object) {
			continue
		}
		if other, ok := claimed.of(f.Path); ok && other != cfg.Name {
			return nil, fmt.Errorf("file %s is also written by configuration %q", f.Path, other)
		}
		if kind == runkind.Changed && a.trusted(f) {
			continue
		}
		p.checked = append(p.checked, i)
		c, err := a.planFile(f, fileLimit(cfg))
		if err != nil && f.Object != "" {
			take(f.Object, err) // one customer's path never fails the configuration
			continue
		}
		if err != nil {
			return nil, err
		}
		if c != nil && (c.Action == Adopt || c.displace != "" && a.listed[f.Path] == 0) && f.Object != "" {
			// A path of object data never takes over a file ccm did not
			// write: sites/www would replace Debian's www.conf pool.
			take(f.Object, fmt.Errorf("%s exists and ccm did not write it: a file of object data never adopts one", f.Real))
			continue
		}
		if c != nil {
			p.Changes = append(p.Changes, *c)
		}
	}
	for _, object := range takenOrder {
		a.leaveOut(p, object, taken[object])
	}
	stale := m.Files
	if m.from != nil && out.SameFiles(m.from) { // every file of the manifest is rendered
		stale = nil
	}
	for _, path := range stale {
		if by, _ := claimed.of(path); out.Has(path) || by != "" || p.held(path) {
			continue
		}
		c, err := a.planRemove(path, fileLimit(cfg))
		if err != nil {
			return nil, err
		}
		if c != nil {
			p.Changes = append(p.Changes, *c)
		}
	}
	sort.SliceStable(p.Changes, func(i, j int) bool { return p.Changes[i].Path < p.Changes[j].Path })
	return p, nil
}

func (a *Applier) planDir(d render.Directory) (*DirChange, error) {
	st, err := a.files.lstat(rel(d.Path))
	if err != nil {
		return nil, err
	}
	if !st.exists {
		return &DirChange{Dir: d}, nil
	}
	attrs := attrChanges(st, d.Mode, d.Ownership)
	if len(attrs) == 0 {
		return nil, nil
	}
	return &DirChange{Dir: d, Exist: true, Attrs: attrs}, nil
}

// mayTakeDir refuses to change the owner of an existing directory of an
// object unless its owner now is an account ccm made: a customer's
// users/www must not be given an operator's /home/www, nor sites/x a
// root-owned /srv/www/x.
func (a *Applier) mayTakeDir(dc *DirChange, ccmUID func(int) (bool, error)) error {
	d := dc.Dir
	if !dc.Exist || !slices.ContainsFunc(dc.Attrs, func(s string) bool {
		return strings.HasPrefix(s, "owner ") || strings.HasPrefix(s, "group ")
	}) {
		return nil
	}
	st, err := a.files.lstat(rel(d.Path))
	if err != nil {
		return err
	}
	if ours, err := ccmUID(st.uid); err != nil || ours {
		return err
	}
	return fmt.Errorf("%s exists, owned by uid %d, which is not an account ccm made: ccm never hands it to object data", d.Real, st.uid)
}

// ccmUIDs returns whether a uid is an account ccm made, reading the
// root's accounts once, at the first question.
func (a *Applier) ccmUIDs() func(uid int) (bool, error) {
	var uids map[int]bool
	return func(uid int) (bool, error) {
		if uids == nil {
			db, err := accounts.Read(a.opts.Root)
			if err != nil {
				return false, err
			}
			uids = map[int]bool{}
			for _, name := range a.allOwned().Users {
				if id, ok := db.UID(name); ok {
					uids[id] = true
				}
			}
		}
		return uids[uid], nil
	}
}

// planFile compares one rendered file with the disk. What stands at its
// path is read through one descriptor, bounded by limit (the
// configuration's max_file_size): mode, owner and content all come from
// that descriptor's inode. A path that holds no regular file (a FIFO, a
// symlink, a directory, a socket, a device) is planned as a creation that
// first moves it aside; one under a component that is not a directory
// (a file standing for a parent) is a creation too (ensureDir moves that
// aside).
func (a *Applier) planFile(f *render.File, limit int64) (*Change, error) {
	c := &Change{Path: f.Path, Real: f.Real, New: f.Content, file: f}
	st, err := a.files.lstat(rel(f.Path))
	if errors.Is(err, unix.ENOTDIR) {
		c.Action, c.Content = Create, true
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if !st.exists {
		c.Action, c.Content = Create, true
		return c, nil
	}
	var over bool
	if st.mode.IsRegular() {
		if st, c.Old, over, err = a.files.readRegular(rel(f.Path), max(limit, int64(len(f.Content)))); err != nil {
			return nil, err
		}
	}
	if !st.mode.IsRegular() {
		c.Action, c.Content, c.displace = Create, true, typeName(st.mode)
		return c, nil
	}
	c.old = st
	c.Content = over || !bytes.Equal(c.Old, f.Content)
	c.dropOld = over
	c.Attrs = attrChanges(st, f.Mode, f.Ownership)
	// An inode whose owner or mode is wrong is never fixed in place: it
	// may be a customer's file with the right content and another link
	// (or an open descriptor) they keep. A fresh copy replaces it.
	c.rewrite = len(c.Attrs) > 0
	c.Action = Update
	if a.listed[f.Path] == 0 {
		c.Action = Adopt // a file ccm did not write: keep its original
		return c, nil
	}
	if !c.Content && len(c.Attrs) == 0 {
		return nil, nil
	}
	return c, nil
}

// fileLimit is how much of an existing file at a managed path is read
// and kept in the journal: the configuration's max_file_size.
func fileLimit(cfg *configs.Config) int64 {
	if cfg == nil || cfg.MaxFileSize <= 0 {
		return configs.DefaultMaxFileSize
	}
	return int64(cfg.MaxFileSize)
}

func (a *Applier) planRemove(path string, limit int64) (*Change, error) {
	real, err := render.Confine(a.opts.Root, path)
	if err != nil {
		return nil, fmt.Errorf("stale file %s: %w", path, err)
	}
	st, err := a.files.lstat(rel(path))
	if err != nil || !st.exists {
		return nil, err
	}
	if !st.mode.IsRegular() {
		return nil, nil // replaced by something ccm did not write
	}
	st, old, over, err := a.files.readRegular(rel(path), limit)
	if err != nil || !st.mode.IsRegular() {
		return nil, err
	}
	c := &Change{Action: Remove, Path: path, Real: real, Old: old, Content: true, old: st, dropOld: over}
	if c.orig, err = a.loadOriginal(path); err != nil {
		return nil, err
	}
	if c.orig != nil { // adopted: put the original back
		c.Action, c.New, c.Content = Restore, c.orig.Content, !bytes.Equal(old, c.orig.Content)
	}
	return c, nil
}

// permBits are the mode bits ccm manages.
const permBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

func attrChanges(st state, mode fs.FileMode, own configs.Ownership) []string {
	var attrs []string
	if st.mode&permBits != mode&permBits {
		attrs = append(attrs, fmt.Sprintf("mode %s -> %s", FormatMode(st.mode), FormatMode(mode)))
	}
	switch {
	case own.UID != nil && *own.UID != st.uid:
		attrs = append(attrs, fmt.Sprintf("owner %d -> %d (%s)", st.uid, *own.UID, own.Owner))
	case own.UID == nil && own.Owner != "":
		attrs = append(attrs, fmt.Sprintf("owner %d -> %s (created by this run)", st.uid, own.Owner))
	}
	switch {
	case own.GID != nil && *own.GID != st.gid:
		attrs = append(attrs, fmt.Sprintf("group %d -> %d (%s)", st.gid, *own.GID, own.Group))
	case own.GID == nil && own.Group != "":
		attrs = append(attrs, fmt.Sprintf("group %d -> %s (created by this run)", st.gid, own.Group))
	}
	return attrs
}

// FormatMode formats permission bits as octal, e.g. 0644 or 4755.
func FormatMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// dirsOf returns the distinct parent directories of the plan's files,
// relative to the root.
func dirsOf(p *Plan) []string {
	seen := map[string]bool{}
	var dirs []string
	for _, c := range p.Changes {
		if d := rel(path.Dir(c.Path)); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}
