package render

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Limits on rendered paths, those of Linux.
const (
	MaxNameLen = 255
	MaxPathLen = 4096
)

// confiner checks paths under one root. It remembers the resolved root and
// the directories it already checked, so rendering thousands of files into
// one directory resolves it once. It lives for one render: the filesystem is
// checked afresh every run.
type confiner struct {
	root     string
	resolved string           // root with symlinks resolved; "" until needed
	dirs     map[string]error // directory -> result of checking it
}

func newConfiner(root string) *confiner {
	return &confiner{root: root, dirs: map[string]error{}}
}

// Confine returns where path (absolute, as a configuration names it) lives
// under root, or an error if it is not a safe path inside root.
func Confine(root, path string) (string, error) {
	return newConfiner(root).confine(path)
}

func (c *confiner) confine(path string) (string, error) {
	if err := checkSyntax(path); err != nil {
		return "", err
	}
	real := filepath.Join(c.root, path)
	if len(real) > MaxPathLen {
		return "", fmt.Errorf("longer than %d bytes", MaxPathLen)
	}
	// A symlink at the path itself is not followed: the applier resolves
	// no symlink (openat2 RESOLVE_NO_SYMLINKS) and moves one standing at a
	// file's path aside before writing the file.
	dir := filepath.Dir(real)
	err, ok := c.dirs[dir]
	if !ok {
		err = c.checkParents(dir)
		c.dirs[dir] = err
	}
	if err != nil {
		return "", err
	}
	return real, nil
}

// checkSyntax rejects paths that are not absolute and clean. Object data
// that tries to climb ("../x") or restart ("/etc") leaves a "..", "//" or
// "/./" in the rendered path, so a clean path is one no data bent.
func checkSyntax(path string) error {
	for _, r := range path {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains a control character")
		}
	}
	if !strings.HasPrefix(path, "/") {
		return errors.New("is not absolute")
	}
	if path == "/" {
		return errors.New("is the root itself")
	}
	if filepath.Clean(path) != path {
		return fmt.Errorf("is not clean (it would be %s): %w", filepath.Clean(path), ErrEscapes)
	}
	for _, part := range strings.Split(path[1:], "/") {
		if len(part) > MaxNameLen {
			return fmt.Errorf("has a name longer than %d bytes", MaxNameLen)
		}
	}
	return nil
}

// checkParents resolves the deepest existing ancestor of dir and requires
// it to stay inside the root, so a symlink planted inside the root cannot
// send a write outside it.
func (c *confiner) checkParents(dir string) error {
	if c.resolved == "" {
		root, err := filepath.EvalSymlinks(c.root)
		if err != nil {
			return fmt.Errorf("root %s: %w", c.root, err)
		}
		c.resolved = root
	}
	root := c.resolved
	for {
		resolved, err := filepath.EvalSymlinks(dir)
		if err == nil {
			if !within(root, resolved) {
				return fmt.Errorf("%s resolves to %s: %w", dir, resolved, ErrEscapes)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", dir, err)
		}
		// A dangling symlink resolves to ErrNotExist too: refuse it, as a
		// later mkdir would follow it.
		if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a dangling symlink: %w", dir, ErrEscapes)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

func within(root, p string) bool {
	if root == "/" {
		return true
	}
	return p == root || strings.HasPrefix(p, root+"/")
}
