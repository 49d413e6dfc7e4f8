package releases

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// MarkerFile marks a directory as ccm's release directory (--release-dir):
// ccm stages releases there and removes what it staged.
const MarkerFile = ".ccm-release-dir"

// Dir is a directory where ccm stages releases, one tree and one manifest
// (<id>.json) each. It is ccm's alone: OpenDir refuses a directory that
// holds anything ccm did not stage, and Prune removes only what it
// staged.
type Dir struct{ path string }

// OpenDir creates or opens the release directory at path. A directory
// without MarkerFile is taken only when it is empty or holds nothing but
// what ccm stages (a release directory of an older ccm); anything else
// is refused, naming it. The directory must be owned by the caller (root
// on a node), and every directory above it by root or the caller and
// writable by nobody else unless sticky (checkAncestors); it is made
// writable by nobody else.
func OpenDir(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, err
	}
	if err := checkAncestors(abs); err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(abs); err != nil {
		return nil, err
	} else if real != abs {
		if err := checkAncestors(real); err != nil {
			return nil, err
		}
	}
	info, err := os.Lstat(abs)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("release directory %s: not a directory", abs)
	}
	if uid := ownerOf(info); uid != os.Geteuid() {
		return nil, fmt.Errorf("release directory %s: owned by uid %d, not by ccm (uid %d): whoever owns it could change what runs", abs, uid, os.Geteuid())
	}
	if err := os.Chmod(abs, 0o755); err != nil {
		return nil, err
	}
	d := &Dir{path: abs}
	if _, err := os.Lstat(filepath.Join(abs, MarkerFile)); err == nil {
		return d, nil
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return nil, err
	}
	var foreign []string
	for _, e := range entries {
		if !staged(e.Name()) {
			foreign = append(foreign, e.Name())
		}
	}
	if len(foreign) > 0 {
		return nil, fmt.Errorf("release directory %s holds %s, which ccm did not stage: give ccm a directory of its own (it removes the releases it staged there)",
			abs, strings.Join(foreign, ", "))
	}
	if err := writeFile(filepath.Join(abs, MarkerFile), []byte("ccm stages configuration releases here, and removes them.\n"), 0o644); err != nil {
		return nil, err
	}
	return d, nil
}

// checkAncestors refuses a release directory under a directory that
// someone other than root or ccm could change, as sshd's StrictModes
// does: every directory above it must be owned by root or the caller and
// writable by nobody else, unless it is sticky (/tmp). Whoever could
// rename the release directory away could plant a tree in its place,
// and ccm runs commands from it by path.
func checkAncestors(dir string) error {
	var errs []error
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSymlink == 0 { // a symlink's own owner and mode mean nothing; its target is checked too
			uid, perm := ownerOf(info), info.Mode()
			switch {
			case uid != 0 && uid != os.Geteuid():
				errs = append(errs, fmt.Errorf("release directory %s: %s above it is owned by uid %d, not by root: its owner could replace the release directory", dir, p, uid))
			case perm&0o022 != 0 && perm&fs.ModeSticky == 0:
				errs = append(errs, fmt.Errorf("release directory %s: %s above it is writable by others (%s) without the sticky bit: they could replace the release directory", dir, p, perm))
			}
		}
		if p == filepath.Dir(p) {
			return errors.Join(errs...)
		}
	}
}

// Path is the directory.
func (d *Dir) Path() string { return d.path }

// staged reports whether name is one ccm stages: a release's tree or
// manifest, or a staging in progress.
func staged(name string) bool {
	return CheckID(strings.TrimSuffix(name, ".json")) == nil || strings.HasPrefix(name, ".stage-")
}

// Staged is a release staged in a Dir.
type Staged struct {
	// Dir is the release's tree.
	Dir string
	// Stored is why the copy in etcd cannot be used (changed, deleted, no
	// longer signed) while the staged copy, verified before and checked
	// now, is: nil when the copy in etcd is whole.
	Stored error
	// Discarded is why a staged copy did not match its manifest and was
	// staged again from etcd; nil when none was, or it matched.
	Discarded error
}

// Stage makes release id ready to load from d: the copy in etcd is
// fetched (Store.Fetch) and checked with verify (its signature; nil: no
// check). A staged copy is used when its manifest verifies too and its
// tree matches it, file by file (digest, mode, owner, nothing more);
// otherwise it is discarded and the fetched copy staged. When the copy in
// etcd is broken (and etcd answered), a staged copy that holds is still
// used, and the reason returned in Staged.Stored: a bad copy in etcd does
// not stop a node that holds a good one. A release that does not verify
// is never staged; a fetched copy that does not verify is Damaged, like
// one whose chunks changed: whoever may write releases can strip a
// signature, and that must not halt the nodes.
func (d *Dir) Stage(ctx context.Context, s *Store, id string, verify func(*Release) error) (*Staged, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	r, ferr := s.Fetch(ctx, id)
	if Transient(ferr) {
		return nil, ferr
	}
	if ferr == nil && verify != nil {
		if err := verify(r); err != nil {
			// A signature stripped, garbled or swapped in etcd is damage
			// to the stored copy, as a changed chunk is: never this
			// node's failure.
			ferr = damagedError{err}
		}
	}
	tree := filepath.Join(d.path, id)
	held, herr := d.check(id, verify)
	switch {
	case ferr != nil && herr == nil:
		return &Staged{Dir: tree, Stored: ferr}, nil
	case ferr != nil:
		return nil, ferr
	case herr == nil && sameFiles(held, r):
		return &Staged{Dir: tree}, nil
	}
	out := &Staged{Dir: tree}
	if !errors.Is(herr, errNotStaged) {
		out.Discarded = herr
	}
	if err := d.remove(id); err != nil {
		return nil, err
	}
	if err := r.Stage(tree); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(d.path, ".stage-"+id+".json")
	os.Remove(tmp)
	if err := writeFile(tmp, raw, 0o644); err != nil {
		return nil, err
	}
	return out, os.Rename(tmp, d.manifest(id))
}

// errNotStaged: the release has never been staged here.
var errNotStaged = errors.New("not staged")

func (d *Dir) manifest(id string) string { return filepath.Join(d.path, id+".json") }

// remove removes release id's staged copy.
func (d *Dir) remove(id string) error {
	err := os.Remove(d.manifest(id))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, os.RemoveAll(filepath.Join(d.path, id)))
}

// check reads the staged manifest of release id, checks that it is
// canonical, has that id and verifies, and that the staged tree matches
// it; it returns the manifest.
func (d *Dir) check(id string, verify func(*Release) error) (*Release, error) {
	mpath, tree := d.manifest(id), filepath.Join(d.path, id)
	_, merr := os.Lstat(mpath)
	_, terr := os.Lstat(tree)
	if errors.Is(merr, fs.ErrNotExist) && errors.Is(terr, fs.ErrNotExist) {
		return nil, errNotStaged
	}
	r, err := d.readManifest(mpath, id)
	if err != nil {
		return nil, err
	}
	if verify != nil {
		if err := verify(r); err != nil {
			return nil, fmt.Errorf("staged %w", err)
		}
	}
	return r, checkTree(tree, r)
}

// readManifest reads a staged manifest: a regular file of the caller's.
func (d *Dir) readManifest(p, id string) (*Release, error) {
	info, err := os.Lstat(p)
	if err != nil {
		return nil, fmt.Errorf("staged release %s: no manifest: %w", Short(id), err)
	}
	if !info.Mode().IsRegular() || ownerOf(info) != os.Geteuid() || info.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("staged release %s: %s is not a file of ccm's that only it may write", Short(id), p)
	}
	if info.Size() > MaxManifestBytes {
		return nil, fmt.Errorf("staged release %s: %s: %d bytes, over the manifest limit of %d", Short(id), p, info.Size(), MaxManifestBytes)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	r, err := decodeManifest(raw)
	if err != nil || r.ID != id {
		return nil, fmt.Errorf("staged release %s: %s is not its manifest", Short(id), p)
	}
	if err := checkManifest(r); err != nil {
		return nil, fmt.Errorf("staged %w", err)
	}
	if got := digest(r.Files); got != id {
		return nil, fmt.Errorf("staged release %s: its manifest digests to %s, not to its id", Short(id), Short(got))
	}
	return r, nil
}

// checkTree checks that the tree at dir holds exactly r's files, each a
// regular file with its content, its StagedMode, owned by the caller
// and linked once, in directories of mode 0755 owned by the caller.
// Every mismatch is named.
func checkTree(dir string, r *Release) error {
	want := map[string]*File{}
	for i := range r.Files {
		want[r.Files[i].Path] = &r.Files[i]
	}
	var errs []error
	fail := func(rel, format string, a ...any) {
		errs = append(errs, fmt.Errorf("staged release %s: %s: %s", r.Short(), rel, fmt.Sprintf(format, a...)))
	}
	found := 0
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		info, err := de.Info()
		if err != nil {
			return err
		}
		if uid := ownerOf(info); uid != os.Geteuid() {
			fail(rel, "owned by uid %d", uid)
		}
		mode := info.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if de.IsDir() {
			if mode != fs.ModeDir|0o755 {
				fail(rel, "a directory of mode %s, not drwxr-xr-x", mode)
			}
			return nil
		}
		f, ok := want[rel]
		switch {
		case !ok:
			fail(rel, "not in the release")
			return nil
		case mode != StagedMode(f.Mode):
			fail(rel, "mode %s, not %s", mode, StagedMode(f.Mode))
			return nil
		case linksOf(info) != 1:
			fail(rel, "linked %d times", linksOf(info))
			return nil
		}
		found++
		if sum, size, err := hashFile(p); err != nil {
			return err
		} else if size != int64(f.Size) || sum != f.SHA256 {
			fail(rel, "its content does not match its digest")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("staged release %s: %w", r.Short(), err)
	}
	if found < len(want) && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("staged release %s: %d of its %d files are missing", r.Short(), len(want)-found, len(want)))
	}
	return errors.Join(errs...)
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, MaxBytes+1))
	return hex.EncodeToString(h.Sum(nil)), n, err
}

func ownerOf(info fs.FileInfo) int {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

func linksOf(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 0
}

// Prune removes every release staged in d but those in keep, and any
// staging left half done; it leaves alone whatever ccm did not stage.
func (d *Dir) Prune(keep ...string) error {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		id := strings.TrimSuffix(e.Name(), ".json")
		if !staged(e.Name()) || (CheckID(id) == nil && slices.Contains(keep, id)) {
			continue
		}
		errs = append(errs, os.RemoveAll(filepath.Join(d.path, e.Name())))
	}
	return errors.Join(errs...)
}
