package applier

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/configs"
)

// tempPrefix marks ccm's temp files, so a run can remove those a crash
// left behind.
const tempPrefix = ".ccm-"

// tree is a directory that file operations are confined to by the kernel:
// every operation goes through an os.Root, which resolves each path
// component with openat and refuses to leave the directory, so a path
// swapped for a symlink between a check and a use cannot send a write,
// chmod, chown, rename or removal outside it. There is no
// check-then-use: the confinement is part of each system call.
//
// Paths are slash-separated and relative to the tree; a configuration's
// absolute path "/etc/x" is "etc/x" (see rel).
type tree struct {
	root *os.Root
	dir  string // for messages
}

// openTree opens dir as a tree, creating it with perm if it is missing
// (perm 0: it must exist).
func openTree(dir string, perm fs.FileMode) (*tree, error) {
	if perm != 0 {
		if err := os.MkdirAll(dir, perm); err != nil {
			return nil, err
		}
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &tree{root: r, dir: dir}, nil
}

func (t *tree) close() { t.root.Close() }

// rel turns a configuration's absolute, clean path into one relative to
// the tree ("." for "/").
func rel(p string) string {
	if p = strings.TrimPrefix(p, "/"); p == "" {
		return "."
	}
	return p
}

// name is a relative path as the user knows it, for messages.
func (t *tree) name(p string) string { return filepath.Join(t.dir, p) }

// lstat returns a path's type, mode and owner without following a final
// symlink.
func (t *tree) lstat(p string) (state, error) {
	fi, err := t.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, nil
	}
	if err != nil {
		return state{}, err
	}
	st := state{exists: true, mode: fi.Mode()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.uid, st.gid = int(sys.Uid), int(sys.Gid)
	}
	return st, nil
}

// readFile reads a regular file. A nil tree (a state directory that does
// not exist yet) has no files.
func (t *tree) readFile(p string) ([]byte, error) {
	if t == nil {
		return nil, fs.ErrNotExist
	}
	return t.root.ReadFile(p)
}

// readDir lists a directory; a missing one, or a nil tree, is empty.
func (t *tree) readDir(dir string) ([]fs.DirEntry, error) {
	if t == nil {
		return nil, nil
	}
	f, err := t.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// stage writes content to a new temp file beside p, created with the final
// mode and owner; with sync, the file is fsynced (otherwise the caller
// makes a batch durable with syncStaged). It returns the temp file's path;
// the caller renames or removes it.
func (t *tree) stage(p string, content []byte, mode fs.FileMode, uid, gid *int, sync bool) (string, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	base := path.Base(p)
	if len(base) > 200 {
		base = base[:200]
	}
	tmp := path.Join(path.Dir(p), tempPrefix+base+"."+hex.EncodeToString(rnd[:])+".tmp")
	f, err := t.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return "", fmt.Errorf("write %s: %w", t.name(p), err)
	}
	err = func() error {
		if uid != nil || gid != nil {
			if err := f.Chown(idOr(uid), idOr(gid)); err != nil {
				return err
			}
		}
		// Chmod after chown (which clears setuid) and regardless of umask.
		if err := f.Chmod(mode); err != nil {
			return err
		}
		if _, err := f.Write(content); err != nil {
			return err
		}
		if !sync {
			return nil
		}
		return f.Sync()
	}()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.root.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", t.name(p), err)
	}
	return tmp, nil
}

// commit renames a durable staged file into place; the caller fsyncs the
// directory.
func (t *tree) commit(tmp, p string) error {
	if err := t.root.Rename(tmp, p); err != nil {
		t.root.Remove(tmp)
		return fmt.Errorf("rename %s: %w", t.name(p), err)
	}
	return nil
}

// writeAtomic replaces p with content, mode and owner, durably.
func (t *tree) writeAtomic(p string, content []byte, mode fs.FileMode, uid, gid *int) error {
	tmp, err := t.stage(p, content, mode, uid, gid, true)
	if err != nil {
		return err
	}
	if err := t.commit(tmp, p); err != nil {
		return err
	}
	return t.syncDir(path.Dir(p))
}

// remove removes a file (or an empty directory); a missing one is no error.
func (t *tree) remove(p string) error {
	if err := t.root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// setAttrs sets owner and mode on the inode it opens, so the check and the
// change concern the same file.
func (t *tree) setAttrs(p string, mode fs.FileMode, own configs.Ownership) error {
	f, err := t.root.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() && !fi.IsDir() {
		return fmt.Errorf("%s is neither a regular file nor a directory", t.name(p))
	}
	if own.UID != nil || own.GID != nil {
		if err := f.Chown(idOr(own.UID), idOr(own.GID)); err != nil {
			return err
		}
	}
	return f.Chmod(mode)
}

// syncBatch is the number of staged files from which one syncfs(2) of
// their filesystem is cheaper than an fsync each.
const syncBatch = 16

// syncStaged makes staged files durable before they are renamed into
// place: a crash after the rename must never expose an empty or partial
// file. A large batch is flushed with one syncfs per filesystem instead of
// one fsync (one journal commit) per file.
func (t *tree) syncStaged(tmps []string) error {
	if len(tmps) < syncBatch {
		for _, tmp := range tmps {
			if err := t.withFile(tmp, syncFile); err != nil {
				return err
			}
		}
		return nil
	}
	synced := map[uint64]bool{} // by device
	for _, tmp := range tmps {
		fi, err := t.root.Stat(tmp)
		if err != nil {
			return err
		}
		dev := uint64(fi.Sys().(*syscall.Stat_t).Dev)
		if synced[dev] {
			continue
		}
		if err := t.withFile(tmp, func(f *os.File) error { return unix.Syncfs(int(f.Fd())) }); err != nil {
			return err
		}
		synced[dev] = true
	}
	return nil
}

func syncFile(f *os.File) error { return f.Sync() }

// syncDir makes renames and removals in dir durable.
func (t *tree) syncDir(dir string) error { return t.withFile(dir, syncFile) }

// withFile opens p read-only for fn.
func (t *tree) withFile(p string, fn func(*os.File) error) error {
	f, err := t.root.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fn(f); err != nil {
		return fmt.Errorf("sync %s: %w", t.name(p), err)
	}
	return nil
}

// removeStaleTemps removes temp files that a crashed run left in dir.
func (t *tree) removeStaleTemps(dir string) {
	entries, err := t.readDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, tempPrefix) && strings.HasSuffix(n, ".tmp") && e.Type().IsRegular() {
			t.root.Remove(path.Join(dir, n))
		}
	}
}

func idOr(id *int) int {
	if id == nil {
		return -1
	}
	return *id
}
