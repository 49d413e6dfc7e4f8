package render_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ccm-dev/ccm/internal/render"
)

// FuzzConfine checks that an accepted path always lands strictly inside
// the root, even with symlinks planted there.
func FuzzConfine(f *testing.F) {
	f.Add("/etc/nginx/x.conf")
	root := f.TempDir()
	outside := f.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "etc", "out")); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink("..", filepath.Join(root, "etc", "up")); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path string) {
		real, err := render.Confine(root, path)
		if err != nil {
			return
		}
		if !strings.HasPrefix(real, root+"/") || filepath.Clean(real) != real {
			t.Fatalf("%q confined to %q, outside %s", path, real, root)
		}
		resolved, err := filepath.EvalSymlinks(filepath.Dir(real))
		if err == nil && !strings.HasPrefix(resolved+"/", root+"/") {
			t.Fatalf("%q resolves to %q, outside %s", path, resolved, root)
		}
	})
}
