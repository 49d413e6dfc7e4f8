package releases

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ccm-dev/ccm/internal/render"
)

// Diff is the unified diff from release a to release b, file by file in
// path order, with a line for each mode change; "" when they hold the
// same files.
func Diff(a, b *Release) string {
	old, new := map[string]File{}, map[string]File{}
	var paths []string
	for _, f := range a.Files {
		old[f.Path] = f
		paths = append(paths, f.Path)
	}
	for _, f := range b.Files {
		new[f.Path] = f
		if _, ok := old[f.Path]; !ok {
			paths = append(paths, f.Path)
		}
	}
	slices.Sort(paths)
	var out strings.Builder
	for _, p := range paths {
		o, inOld := old[p]
		n, inNew := new[p]
		out.WriteString(render.Unified("/"+p, o.Content, n.Content, inOld, inNew))
		if inOld && inNew && o.Mode != n.Mode {
			fmt.Fprintf(&out, "~ %s: mode %04o -> %04o\n", p, uint32(o.Mode), uint32(n.Mode))
		}
	}
	return out.String()
}
