package releases

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"unicode/utf8"
)

// MaxFiles is the most files one release holds: a manifest names no more
// chunk keys than this many files need.
const MaxFiles = 10000

// checkManifest refuses a manifest that is not canonical, naming every
// offending path: each path clean and relative (path.Clean(p) == p, no
// "." or ".." segment, no dot file, no control character), in strictly
// increasing order (so no path twice), none the directory of another;
// each mode permission bits only; each size and chunk count the one its
// content has; the whole within MaxBytes and MaxFiles. A canonical
// manifest stages as exactly one tree: the signature over its id covers
// every file that runs, and no entry can hide behind another.
func checkManifest(r *Release) error {
	var errs []error
	fail := func(p, format string, a ...any) {
		errs = append(errs, fmt.Errorf("release %s: file %q: %s", r.Short(), p, fmt.Sprintf(format, a...)))
	}
	if len(r.Files) > MaxFiles {
		return fmt.Errorf("release %s: %d files, over the limit of %d", r.Short(), len(r.Files), MaxFiles)
	}
	dirs := map[string]bool{}
	total := 0
	for i, f := range r.Files {
		if err := checkPath(f.Path); err != nil {
			fail(f.Path, "%v", err)
			continue
		}
		if i > 0 && r.Files[i-1].Path >= f.Path {
			fail(f.Path, "out of order or listed twice: a manifest lists each path once, sorted")
		}
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
		if f.Mode&^fs.ModePerm != 0 {
			fail(f.Path, "mode %o: permission bits only", uint32(f.Mode))
		}
		if f.Size < 0 || f.Size > MaxBytes || f.Chunks != chunksOf(f.Size) {
			fail(f.Path, "size %d in %d chunks: not what ccm stores (%d bytes a chunk)", f.Size, f.Chunks, ChunkBytes)
		}
		total += max(f.Size, 0)
	}
	for _, f := range r.Files {
		if dirs[f.Path] {
			fail(f.Path, "is a file and the directory of another file: the two would collide when staged")
		}
	}
	if total > MaxBytes {
		errs = append(errs, fmt.Errorf("release %s: %d bytes, over the release limit of %d bytes", r.Short(), total, MaxBytes))
	}
	return errors.Join(errs...)
}

// checkPath refuses a path that is not canonical.
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("an empty path")
	case !utf8.ValidString(p):
		return errors.New("not UTF-8")
	case strings.ContainsFunc(p, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		return errors.New("a control character in the path")
	case path.IsAbs(p) || path.Clean(p) != p:
		return errors.New("not a clean relative path (path.Clean would change it)")
	}
	for seg := range strings.SplitSeq(p, "/") {
		if strings.HasPrefix(seg, ".") {
			return fmt.Errorf("segment %q: no \".\", \"..\" or dot file in a release", seg)
		}
	}
	return nil
}

// chunksOf is how many chunks a file of size bytes is stored in.
func chunksOf(size int) int { return max(1, (size+ChunkBytes-1)/ChunkBytes) }

// StagedMode is the mode a file of mode m is staged with: 0755 when any
// execute bit is set, else 0644. Nothing staged is writable by anyone
// but its owner (root on a node), and nothing is setuid.
func StagedMode(m fs.FileMode) fs.FileMode {
	if m&0o111 != 0 {
		return 0o755
	}
	return 0o644
}
