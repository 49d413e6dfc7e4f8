package applier_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects/objectstest"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// BenchmarkPerFileRun is a per-file event's run: 10,000 sites, a file
// each, converged by a full run; each op is the event-driven run after one
// site changed (alternately site 7 and site 7919), on a real root and
// state directory: render, plan, stage, journal, rename, manifest. Each
// op's snapshot differs from the one before in two sites (7 and 7919),
// as in render's BenchmarkPerFileEvent.
func BenchmarkPerFileRun(b *testing.B) {
	dir := b.TempDir()
	yaml := "subscribes: [sites]\nfiles:\n  - {path: '/etc/nginx/sites/{{ .Object.ID }}.conf', for_each: sites, template: site.tmpl}\n"
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "site.tmpl"), []byte("server_name {{ index .Object.Data.domains 0 }}; # {{ .Object.ID }} {{ .Object.Data.user }}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	set, err := configs.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	a := applier.New(applier.Options{Root: b.TempDir(), StateDir: filepath.Join(b.TempDir(), "state"), ConfigDir: dir, Node: render.Node{Name: "n1"}})
	const n = 10000
	snaps := objectstest.SiteEvents(n)
	ctx, names := context.Background(), []string{"sites"}
	if r := a.Run(ctx, runkind.Full, set, snaps[0], names); r.Err != nil {
		b.Fatal(r.Err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		r := a.Run(ctx, runkind.Changed, set, snaps[1+i%2], names)
		if r.Err != nil || r.Outcomes[0].Updated != min(i, 2) {
			b.Fatalf("%+v", r)
		}
	}
}
