package applier

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tempPrefix marks ccm's temp files, so a run can remove those a crash
// left behind.
const tempPrefix = ".ccm-"

// stage writes content to a new temp file beside path, created with the
// final mode and owner; with sync, the file is fsynced (otherwise the caller
// makes a batch durable with syncStaged). The caller renames or removes it.
func stage(path string, content []byte, mode fs.FileMode, uid, gid *int, sync bool) (string, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	base := filepath.Base(path)
	if len(base) > 200 {
		base = base[:200]
	}
	tmp := filepath.Join(filepath.Dir(path), tempPrefix+base+"."+hex.EncodeToString(rnd[:])+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return "", err
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
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tmp, nil
}

// commit renames a durable staged file into place; the caller fsyncs the
// directory.
func commit(tmp, path string) error {
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// writeAtomic replaces path with content, mode and owner, durably.
func writeAtomic(path string, content []byte, mode fs.FileMode, uid, gid *int) error {
	tmp, err := stage(path, content, mode, uid, gid, true)
	if err != nil {
		return err
	}
	if err := commit(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncBatch is the number of staged files from which one syncfs(2) of
// their filesystem is cheaper than an fsync each.
const syncBatch = 16

// syncStaged makes staged files durable before they are renamed into
// place: a crash after the rename must never expose an empty or partial
// file. A large batch is flushed with one syncfs per filesystem instead of
// one fsync (one journal commit) per file.
func syncStaged(tmps []string) error {
	if len(tmps) < syncBatch {
		for _, tmp := range tmps {
			if err := fsyncPath(tmp); err != nil {
				return err
			}
		}
		return nil
	}
	synced := map[uint64]bool{} // by device
	for _, tmp := range tmps {
		fi, err := os.Stat(tmp)
		if err != nil {
			return err
		}
		dev := uint64(fi.Sys().(*syscall.Stat_t).Dev)
		if synced[dev] {
			continue
		}
		if err := syncfs(tmp); err != nil {
			return err
		}
		synced[dev] = true
	}
	return nil
}

// fsyncPath fsyncs a file or a directory.
func fsyncPath(path string) error {
	return withFile(path, func(f *os.File) error {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", path, err)
		}
		return nil
	})
}

// syncDir makes renames and removals in dir durable.
func syncDir(dir string) error { return fsyncPath(dir) }

// syncfs flushes the whole filesystem that holds path.
func syncfs(path string) error {
	return withFile(path, func(f *os.File) error {
		if err := unix.Syncfs(int(f.Fd())); err != nil {
			return fmt.Errorf("syncfs %s: %w", path, err)
		}
		return nil
	})
}

// withFile opens path read-only for fn.
func withFile(path string, fn func(*os.File) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f)
}

// removeStaleTemps removes temp files that a crashed run left in dir.
func removeStaleTemps(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, tempPrefix) && strings.HasSuffix(n, ".tmp") && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

func idOr(id *int) int {
	if id == nil {
		return -1
	}
	return *id
}
