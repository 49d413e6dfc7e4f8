package main

import (
	"fmt"
	"path/filepath"
	"time"
)

// latency: an agent with --debounce 0 and 10,000 sites; from a put
// returning until the rendered file holds the change. The floor is one etcd
// write (the put's own round trip), measured on the same writes.
func (b *bench) latency() error {
	const n, writes = 10000, 60
	const prefix = "/lat"
	cli, err := b.sites(prefix, n)
	if err != nil {
		return err
	}
	defer cli.Close()
	dir, err := b.configDir("latency", map[string]string{"nginx.yaml": vhostYAML})
	if err != nil {
		return err
	}
	start := time.Now()
	ag, err := b.startAgent("latency", prefix, dir, 0, time.Minute)
	if err != nil {
		return err
	}
	defer ag.stop()
	sites := filepath.Join(ag.root, "etc/nginx/sites-enabled")
	if err := waitFor(5*time.Minute, 10*time.Millisecond, func() bool { return countFiles(sites) == n }); err != nil {
		return fmt.Errorf("initial converge: %w", err)
	}
	b.add("latency", "agent start to 10,000 files", time.Since(start).Seconds(), "s", 0, "", "list, render and write everything")

	lat, floor, err := b.putToFile(cli, prefix, "change", n, writes, func(site int) string {
		return filepath.Join(sites, fmt.Sprintf("s%06d.conf", site))
	})
	if err != nil {
		return err
	}
	s, f := sortDurations(lat), sortDurations(floor)
	b.add("latency", "event-to-file p50", ms(percentile(s, 50)), "ms", 20, "< 20 ms", fmt.Sprintf("%.1fx one etcd put (p50 %.2f ms); confd 0.17: 324 ms", ms(percentile(s, 50))/max(ms(percentile(f, 50)), 0.001), ms(percentile(f, 50))))
	b.add("latency", "event-to-file p90", ms(percentile(s, 90)), "ms", 0, "", "")
	b.add("latency", "event-to-file max", ms(s[len(s)-1]), "ms", 0, "", fmt.Sprintf("%d writes", writes))
	return nil
}
