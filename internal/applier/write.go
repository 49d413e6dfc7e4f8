package applier

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/internal/configs"
)

// tempPrefix marks ccm's temp files, so a run can remove those a crash
// left behind.
const tempPrefix = ".ccm-"

// tree is a directory that file operations are confined to by the kernel.
// Every path is resolved with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)
// from the tree's directory, and the last component is then used with
// *at system calls that do not follow it: no component of a managed path
// may be a symlink, and nothing resolves outside the tree. A customer who
// swaps a file or a directory for a symlink between a check and a use
// makes the operation fail; it can never send a write, chmod, chown,
// rename or removal elsewhere, even with --root /. There is no
// check-then-use: the refusal is part of each system call.
//
// Paths are slash-separated and relative to the tree; a configuration's
// absolute path "/etc/x" is "etc/x" (see rel).
type tree struct {
	fd  int    // O_PATH descriptor of the directory
	dir string // for messages
}

// resolve is how every path in a tree is resolved.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// openTree opens dir as a tree, creating it with perm if it is missing
// (perm 0: it must exist). dir itself is the operator's: symlinks in it
// are followed.
func openTree(dir string, perm fs.FileMode) (*tree, error) {
	if perm != 0 {
		if err := os.MkdirAll(dir, perm); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return &tree{fd: fd, dir: dir}, nil
}

func (t *tree) close() { unix.Close(t.fd) }

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

// pathErr names the path and says plainly when a symlink or an escape
// was refused.
func (t *tree) pathErr(op, p string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		err = fmt.Errorf("a component is a symlink or leads outside %s; refusing to follow it (%w)", t.dir, err)
	}
	return &fs.PathError{Op: op, Path: t.name(p), Err: err}
}

// open opens p with flags, resolving no symlink on the way or at the end.
func (t *tree) open(p string, flags uint64, mode fs.FileMode) (*os.File, error) {
	fd, err := unix.Openat2(t.fd, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC | unix.O_NOFOLLOW, Mode: uint64(mode.Perm()), Resolve: resolve})
	if err != nil {
		return nil, t.pathErr("open", p, err)
	}
	return os.NewFile(uintptr(fd), t.name(p)), nil
}

// parent opens the directory that holds p and returns it with p's last
// component, for the *at system calls.
func (t *tree) parent(p string) (*os.File, string, error) {
	dir, base := path.Split(p)
	if dir == "" {
		dir = "."
	}
	f, err := t.open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return f, base, err
}

// at runs fn with the descriptor of p's directory and p's last component.
func (t *tree) at(op, p string, fn func(dirfd int, base string) error) error {
	d, base, err := t.parent(p)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := fn(int(d.Fd()), base); err != nil {
		return t.pathErr(op, p, err)
	}
	return nil
}

// lstat returns a path's type, mode and owner without following a final
// symlink.
func (t *tree) lstat(p string) (state, error) {
	var st unix.Stat_t
	err := t.at("lstat", p, func(dirfd int, base string) error {
		return unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	})
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, nil
	}
	if err != nil {
		return state{}, err
	}
	return statState(&st), nil
}

// statState is a stat's type, mode, owner, size and link count.
func statState(st *unix.Stat_t) state {
	return state{exists: true, mode: fileMode(st.Mode), uid: int(st.Uid), gid: int(st.Gid), size: st.Size, nlink: uint64(st.Nlink)}
}

// readRegular opens p without following it and returns its state as the
// descriptor's fstat has it, and, when it is a regular file of at most
// limit bytes, its content read through the same descriptor (never more
// than limit+1 bytes: a 2 GB sparse file at a managed path is not read).
// over is set when the file is larger than limit; the content is then nil.
// A path that is not a regular file by the time it is opened is returned
// with its state and no content.
func (t *tree) readRegular(p string, limit int64) (st state, content []byte, over bool, err error) {
	f, err := t.open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return state{}, nil, false, err
	}
	defer f.Close()
	var raw unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &raw); err != nil {
		return state{}, nil, false, t.pathErr("fstat", p, err)
	}
	st = statState(&raw)
	if !st.mode.IsRegular() {
		return st, nil, false, nil
	}
	if st.size > limit {
		return st, nil, true, nil
	}
	content, err = io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return st, nil, false, t.pathErr("read", p, err)
	}
	if int64(len(content)) > limit { // it grew meanwhile
		return st, nil, true, nil
	}
	return st, content, false, nil
}

// moveAside renames what stands at p (never following it) to a new name
// beside it, NAME.ccm-displaced-UNIXTIME-RANDOM; the rename never replaces
// an existing entry (RENAME_NOREPLACE). It returns the new name.
func (t *tree) moveAside(p string) (string, error) {
	base := path.Base(p)
	if len(base) > 200 {
		base = base[:200]
	}
	var aside string
	err := t.at("rename", p, func(dirfd int, name string) error {
		for {
			var rnd [4]byte
			_, _ = rand.Read(rnd[:])
			aside = fmt.Sprintf("%s.ccm-displaced-%d-%s", base, time.Now().Unix(), hex.EncodeToString(rnd[:]))
			err := unix.Renameat2(dirfd, name, dirfd, aside, unix.RENAME_NOREPLACE)
			if !errors.Is(err, unix.EEXIST) {
				return err
			}
		}
	})
	return path.Join(path.Dir(p), aside), err
}

// fileMode converts a stat mode to an fs.FileMode (type and permissions).
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFREG:
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	default:
		mode |= fs.ModeIrregular
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// readFile reads a regular file. A nil tree (a state directory that does
// not exist yet) has no files.
func (t *tree) readFile(p string) ([]byte, error) {
	if t == nil {
		return nil, fs.ErrNotExist
	}
	f, err := t.open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", t.name(p), typeName(info.Mode()))
	}
	return io.ReadAll(f)
}

// typeName names a file type for an error.
func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return m.Type().String()
}

// readDir lists a directory; a missing one, or a nil tree, is empty.
func (t *tree) readDir(dir string) ([]fs.DirEntry, error) {
	if t == nil {
		return nil, nil
	}
	f, err := t.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// mkdir creates a directory.
func (t *tree) mkdir(p string, perm fs.FileMode) error {
	return t.at("mkdir", p, func(dirfd int, base string) error {
		return unix.Mkdirat(dirfd, base, uint32(perm.Perm()))
	})
}

// mkdirAll creates a directory and its missing parents.
func (t *tree) mkdirAll(p string, perm fs.FileMode) error {
	if p == "." {
		return nil
	}
	if st, err := t.lstat(p); err != nil || st.exists {
		return err
	}
	if err := t.mkdirAll(path.Dir(p), perm); err != nil {
		return err
	}
	if err := t.mkdir(p, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
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
	f, err := t.open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, mode)
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
		t.remove(tmp)
		return "", fmt.Errorf("write %s: %w", t.name(p), err)
	}
	return tmp, nil
}

// commit renames a durable staged file into place; the caller fsyncs the
// directory.
func (t *tree) commit(tmp, p string) error {
	if path.Dir(tmp) != path.Dir(p) {
		return fmt.Errorf("rename %s: the staged file is in another directory", t.name(p))
	}
	err := t.at("rename", p, func(dirfd int, base string) error {
		return unix.Renameat(dirfd, path.Base(tmp), dirfd, base)
	})
	if err != nil {
		t.remove(tmp)
		return err
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

// remove removes a file, a symlink (not its target) or an empty
// directory; a missing one is no error.
func (t *tree) remove(p string) error {
	err := t.at("remove", p, func(dirfd int, base string) error {
		err := unix.Unlinkat(dirfd, base, 0)
		if errors.Is(err, unix.EISDIR) {
			err = unix.Unlinkat(dirfd, base, unix.AT_REMOVEDIR)
		}
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// setDirAttrs sets owner and mode on the directory it opens, so the check
// and the change concern the same inode. It opens with O_DIRECTORY: a
// file renamed in for the directory between ccm's look and its open (a
// customer's executable, or a hard link to a root-owned file) is refused,
// never given the directory's owner, group or setgid mode.
func (t *tree) setDirAttrs(p string, mode fs.FileMode, own configs.Ownership) error {
	return t.setAttrs(p, unix.O_DIRECTORY, mode, own)
}

// setFileAttrs sets owner and mode on the regular file it opens, if it is
// the file's one name: an inode that another name shares (a hard link a
// user made to a file of theirs, or to root's) is refused, never changed.
func (t *tree) setFileAttrs(p string, mode fs.FileMode, own configs.Ownership) error {
	return t.setAttrs(p, 0, mode, own)
}

func (t *tree) setAttrs(p string, kind uint64, mode fs.FileMode, own configs.Ownership) error {
	f, err := t.open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|kind, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	switch {
	case kind == unix.O_DIRECTORY && !fi.IsDir():
		return fmt.Errorf("%s is not a directory", t.name(p))
	case kind != unix.O_DIRECTORY && !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", t.name(p))
	case kind != unix.O_DIRECTORY && fi.Sys().(*syscall.Stat_t).Nlink != 1:
		return fmt.Errorf("%s has other names (hard links): refusing to change its owner or mode", t.name(p))
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

// syncLater starts syncStaged(tmps) and returns a function that waits for
// its result, as often as it is called.
func (t *tree) syncLater(tmps []string) func() error {
	if len(tmps) == 0 {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() { done <- t.syncStaged(tmps) }()
	return sync.OnceValue(func() error { return <-done })
}

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
		var st unix.Stat_t
		if err := t.at("stat", tmp, func(dirfd int, base string) error {
			return unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		}); err != nil {
			return err
		}
		dev := uint64(st.Dev)
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
	f, err := t.open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fn(f); err != nil {
		return fmt.Errorf("sync %s: %w", t.name(p), err)
	}
	return nil
}

// removeStaleTemps removes temp files that a crashed run left in dir:
// only names ccm makes (.ccm-NAME.<12 hex digits>.tmp), and only files
// the agent's user owns, so a customer's own .ccm-x.tmp in a managed
// directory of theirs is never deleted. (A temp staged with a customer's
// owner that a crash left stays, harmless, until removed by hand.)
func (t *tree) removeStaleTemps(dir string) {
	entries, err := t.readDir(dir)
	if err != nil {
		return
	}
	euid := os.Geteuid()
	for _, e := range entries {
		n := e.Name()
		if !isTempName(n) || !e.Type().IsRegular() {
			continue
		}
		if st, err := t.lstat(path.Join(dir, n)); err != nil || st.uid != euid || st.nlink != 1 {
			continue
		}
		t.remove(path.Join(dir, n))
	}
}

// isTempName reports whether n is a name stage gives a temp file.
func isTempName(n string) bool {
	rest, ok := strings.CutPrefix(n, tempPrefix)
	if !ok {
		return false
	}
	if rest, ok = strings.CutSuffix(rest, ".tmp"); !ok || len(rest) < 14 || rest[len(rest)-13] != '.' {
		return false
	}
	_, err := hex.DecodeString(rest[len(rest)-12:])
	return err == nil
}

func idOr(id *int) int {
	if id == nil {
		return -1
	}
	return *id
}
