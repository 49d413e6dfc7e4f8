package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// latency: an agent with --debounce 0 and 10,000 sites; from a put
// returning until the rendered file holds the change. The floor is one etcd
// write (the put's own round trip), measured on the same writes.
func (b *bench) latency() error {
	const n, writes = 10000, 60
	const prefix = "/lat"
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := b.load(cli, prefix, "sites", n, func(i int) string { return siteValue(i, fmt.Sprintf("s%d.example", i)) }); err != nil {
		return err
	}
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

	var lat, floor []time.Duration
	for i := 0; i < writes; i++ {
		domain := fmt.Sprintf("change%d.example", i)
		key := fmt.Sprintf("%s/objects/sites/s%06d", prefix, (i*7919)%n)
		before := time.Now()
		if _, err := cli.Put(b.ctx, key, siteValue(i, domain)); err != nil {
			return err
		}
		t0 := time.Now()
		floor = append(floor, t0.Sub(before))
		file := filepath.Join(sites, fmt.Sprintf("s%06d.conf", (i*7919)%n))
		want := []byte(domain)
		if err := waitFor(30*time.Second, 100*time.Microsecond, func() bool {
			got, _ := os.ReadFile(file)
			return bytes.Contains(got, want)
		}); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(20 * time.Millisecond) // let the run finish (status, unlock)
	}
	s, f := sortDurations(lat), sortDurations(floor)
	b.add("latency", "event-to-file p50", ms(percentile(s, 50)), "ms", 20, "< 20 ms", fmt.Sprintf("%.1fx one etcd put (p50 %.2f ms); confd 0.17: 324 ms", ms(percentile(s, 50))/max(ms(percentile(f, 50)), 0.001), ms(percentile(f, 50))))
	b.add("latency", "event-to-file p90", ms(percentile(s, 90)), "ms", 0, "", "")
	b.add("latency", "event-to-file max", ms(s[len(s)-1]), "ms", 0, "", fmt.Sprintf("%d writes", writes))
	return nil
}
