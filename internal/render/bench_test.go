package render_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/objects/objectstest"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// benchSnapshot returns n site objects like the example's.
func benchSnapshot(n int) *objects.Snapshot {
	b := objects.NewBuilder("/ccm", 1, nil)
	for i := 0; i < n; i++ {
		b.Add(fmt.Sprintf("/ccm/objects/sites/site%05d", i),
			[]byte(fmt.Sprintf(`{"user":"u%d","domains":["s%d.example.com","www.s%d.example.com"]}`, i, i, i)), int64(i+2))
	}
	return b.Snapshot()
}

func benchConfig(b *testing.B) *configs.Config {
	dir := b.TempDir()
	tmpl, err := os.ReadFile("../../examples/ccm/templates/vhost.conf.tmpl")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "vhost.conf.tmpl"), tmpl, 0o644); err != nil {
		b.Fatal(err)
	}
	yaml := "subscribes: [sites, certificates]\nfiles:\n  - {path: '/etc/nginx/sites-enabled/{{ .Object.ID }}.conf', for_each: sites, template: vhost.conf.tmpl}\n"
	if err := os.WriteFile(filepath.Join(dir, "nginx.yaml"), []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	set, err := configs.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	return set.Configs["nginx"]
}

// BenchmarkRender renders 1,000 vhosts (the example template) per op.
func BenchmarkRender(b *testing.B) {
	cfg, snap, root := benchConfig(b), benchSnapshot(1000), b.TempDir()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := render.Render(cfg, snap, render.Node{Name: "n"}, root); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "files/s")
}

// BenchmarkUnified diffs a 2,000-line file with 20 changed lines.
func BenchmarkUnified(b *testing.B) {
	var old, new strings.Builder
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&old, "line %d of the configuration\n", i)
		if i%100 == 0 {
			fmt.Fprintf(&new, "changed line %d\n", i)
		} else {
			fmt.Fprintf(&new, "line %d of the configuration\n", i)
		}
	}
	o, n := []byte(old.String()), []byte(new.String())
	b.ReportAllocs()
	for b.Loop() {
		if render.Unified("/x", o, n, true, true) == "" {
			b.Fatal("no diff")
		}
	}
}

// BenchmarkOneFileEvent renders 10,000 sites into one file through the
// cache after one site changed: the one-file event's render.
func BenchmarkOneFileEvent(b *testing.B) {
	benchEvent(b, "{path: /etc/nginx/sites.map, template: sites.map.tmpl}",
		"# managed by ccm\n{{- range .Objects.sites }}\n{{ index .Data.domains 0 }} {{ .ID }} {{ .Data.user }};\n{{- end }}\n")
}

// BenchmarkPerFileEvent renders 10,000 sites, a file each, through the
// cache after one site changed: the per-file event's render.
func BenchmarkPerFileEvent(b *testing.B) {
	benchEvent(b, "{path: '/etc/nginx/sites/{{ .Object.ID }}.conf', for_each: sites, template: sites.map.tmpl}",
		"{{ index .Object.Data.domains 0 }} {{ .Object.ID }} {{ .Object.Data.user }};\n")
}

// benchEvent renders entry (a file entry of template sites.map.tmpl, which
// is tmpl) over 10,000 sites through the cache, after one site changed,
// alternately site 7 and site 7919.
func benchEvent(b *testing.B, entry, tmpl string) {
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "sites.map.tmpl"), []byte(tmpl), 0o644); err != nil {
		b.Fatal(err)
	}
	yaml := "subscribes: [sites]\nfiles:\n  - " + entry + "\n"
	if err := os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	set, err := configs.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	cfg, root, cache := set.Configs["sites"], b.TempDir(), render.NewCache()
	const n = 10000
	snaps := objectstest.SiteEvents(n)
	ctx := context.Background()
	if _, err := cache.Render(ctx, cfg, snaps[0], render.Node{Name: "n"}, root, runkind.Full); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := cache.Render(ctx, cfg, snaps[1+i%2], render.Node{Name: "n"}, root, runkind.Changed); err != nil {
			b.Fatal(err)
		}
	}
}
