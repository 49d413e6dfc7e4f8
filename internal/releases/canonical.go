package releases

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

// MaxFiles is the most files one release holds: a manifest names no more
// chunk keys than this many files need.
const MaxFiles = 10000

// checkManifest refuses a manifest that is not canonical, naming every
// offending path: each path clean and relative (path.Clean(p) == p, no
// "." or ".." segment, no dot file, no control character), in strictly
// increasing order (so no path twice), none the directory of another,
// none over MaxPathBytes, MaxSegmentBytes or MaxSegments;
// each mode permission bits only; each size and chunk count the one its
// content has; the whole within MaxBytes and MaxFiles. A canonical
// manifest stages as exactly one tree: the signature over its id covers
// every file that runs, and no entry can hide behind another.
func checkManifest(r *Release) error {
	var errs []error
	fail := func(p, format string, a ...any) {
		if len(p) > 200 { // an error names a hostile path, not all of it
			p = p[:200] + "..."
		}
		errs = append(errs, fmt.Errorf("release %s: file %q: %s", r.Short(), p, fmt.Sprintf(format, a...)))
	}
	if len(r.Files) > MaxFiles {
		return fmt.Errorf("release %s: %d files, over the limit of %d", r.Short(), len(r.Files), MaxFiles)
	}
	total, sorted := 0, true
	for i, f := range r.Files {
		if err := checkPath(f.Path); err != nil {
			fail(f.Path, "%v", err)
			sorted = false
			continue
		}
		if i > 0 && r.Files[i-1].Path >= f.Path {
			fail(f.Path, "out of order or listed twice: a manifest lists each path once, sorted")
			sorted = false
		}
		if f.Mode&^fs.ModePerm != 0 {
			fail(f.Path, "mode %o: permission bits only", uint32(f.Mode))
		}
		if f.Size < 0 || f.Size > MaxBytes || f.Chunks != chunksOf(f.Size) {
			fail(f.Path, "size %d in %d chunks: not what ccm stores (%d bytes a chunk)", f.Size, f.Chunks, ChunkBytes)
		}
		total += max(f.Size, 0)
	}
	if sorted {
		// The paths under p+"/" are one run of a sorted list: one binary
		// search a path, never a walk up every path's parents (a path
		// of many segments would make that quadratic).
		for _, f := range r.Files {
			under := f.Path + "/"
			i, _ := slices.BinarySearchFunc(r.Files, under, func(g File, t string) int { return strings.Compare(g.Path, t) })
			if i < len(r.Files) && strings.HasPrefix(r.Files[i].Path, under) {
				fail(f.Path, "is a file and the directory of another file: the two would collide when staged")
			}
		}
	}
	if total > MaxBytes {
		errs = append(errs, fmt.Errorf("release %s: %d bytes, over the release limit of %d bytes", r.Short(), total, MaxBytes))
	}
	return errors.Join(errs...)
}

// MaxPathBytes, MaxSegmentBytes and MaxSegments bound a release's
// paths: Linux's PATH_MAX and NAME_MAX, and a depth no configuration
// directory needs. Each check of a path is then linear in its length.
const (
	MaxPathBytes    = 4096
	MaxSegmentBytes = 255
	MaxSegments     = 64
)

// MaxManifestBytes is the largest manifest ccm decodes, from etcd or a
// staged copy: MaxFiles entries of long paths. A larger one is refused
// by its size, before it is decoded.
const MaxManifestBytes = 4 << 20

// decodeManifest decodes a manifest of at most MaxManifestBytes.
func decodeManifest(raw []byte) (*Release, error) {
	if len(raw) > MaxManifestBytes {
		return nil, fmt.Errorf("%d bytes, over the manifest limit of %d", len(raw), MaxManifestBytes)
	}
	r := &Release{}
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, err
	}
	return r, nil
}

// checkPath refuses a path that is not canonical.
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("an empty path")
	case len(p) > MaxPathBytes:
		return fmt.Errorf("%d bytes, over the path limit of %d", len(p), MaxPathBytes)
	case strings.Count(p, "/") >= MaxSegments:
		return fmt.Errorf("%d segments, over the limit of %d", strings.Count(p, "/")+1, MaxSegments)
	case !utf8.ValidString(p):
		return errors.New("not UTF-8")
	case strings.ContainsFunc(p, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		return errors.New("a control character in the path")
	case path.IsAbs(p) || path.Clean(p) != p:
		return errors.New("not a clean relative path (path.Clean would change it)")
	}
	for seg := range strings.SplitSeq(p, "/") {
		if len(seg) > MaxSegmentBytes {
			return fmt.Errorf("a segment of %d bytes, over the limit of %d", len(seg), MaxSegmentBytes)
		}
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
