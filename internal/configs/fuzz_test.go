package configs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ccm-dev/ccm/internal/configs"
)

// FuzzLoad checks that any configuration file either loads or fails with an
// error that names it, and never panics.
func FuzzLoad(f *testing.F) {
	f.Add("files:\n  - {path: /x, content: x}\n", "")
	f.Fuzz(func(t *testing.T, yaml, tmpl string) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "templates", "t.tmpl"), []byte(tmpl), 0o644); err != nil {
			t.Fatal(err)
		}
		set, err := configs.Load(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(set.Order) != len(set.Configs) {
			t.Fatalf("order %v does not cover %d configurations", set.Order, len(set.Configs))
		}
	})
}
