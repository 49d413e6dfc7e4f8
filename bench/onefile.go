package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// onefileYAML renders every site into one map file, the shape of an nginx
// map or a users table: the template ranges over the whole type.
const onefileYAML = `subscribes: [sites]
files:
  - path: /etc/nginx/sites.map
    template: sites.map.tmpl
`

const onefileTmpl = `# managed by ccm
{{- range .Objects.sites }}
{{ index .Data.domains 0 }} {{ .ID }} {{ .Data.user }};
{{- end }}
`

// onefile: a ccm agent process (the shipped binary, with the systemd
// unit's memory settings) renders 10,000 sites into one file. It reports
// the resident memory after converging and the event-to-file latency; with
// -confd it runs confd 0.17 on the same data, one after the other, in the
// same run.
func (b *bench) onefile() error {
	const n, writes = 10000, 40
	const prefix = "/one"
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := b.load(cli, prefix, "sites", n, func(i int) string { return siteValue(i, fmt.Sprintf("s%d.example", i)) }); err != nil {
		return err
	}
	dir, err := b.configDir("onefile", map[string]string{"sites.yaml": onefileYAML, "templates/sites.map.tmpl": onefileTmpl})
	if err != nil {
		return err
	}
	root := filepath.Join(b.work, "onefile", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		return err
	}
	args := []string{"agent", "--debounce", "0s", "--metrics-addr", metricsAddr}
	if b.profiles != "" {
		args = append(args, "--pprof")
	}
	cmd := exec.Command(b.ccm, args...)
	cmd.Env = append(append(os.Environ(), unitEnv()...), "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX="+prefix, "CCM_CONFIG_DIR="+dir,
		"CCM_ROOT="+root, "CCM_STATE_DIR="+filepath.Join(b.work, "onefile", "state"), "CCM_NODE=onefile", "CCM_LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	file := filepath.Join(root, "etc/nginx/sites.map")
	last := []byte(fmt.Sprintf(" s%06d ", n-1))
	start := time.Now()
	if err := waitFor(2*time.Minute, 10*time.Millisecond, func() bool {
		got, _ := os.ReadFile(file)
		return bytes.Contains(got, last)
	}); err != nil {
		return fmt.Errorf("initial converge: %w", err)
	}
	b.add("onefile", "agent start to one file of 10,000 sites", time.Since(start).Seconds(), "s", 0, "", "")
	if err := waitMetric(metricsAddr, "ccm_runs_total", 30*time.Second); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // as footprint: the run's last steps, then measure
	rss, err := procRSS(cmd.Process.Pid)
	if err != nil {
		return err
	}
	if b.profiles != "" {
		if err := fetchProfile(metricsAddr, "heap", filepath.Join(b.profiles, "onefile.heap.pprof")); err != nil {
			return err
		}
	}
	var cpuDone chan error
	if b.profiles != "" {
		cpuDone = make(chan error, 1)
		go func() {
			cpuDone <- fetchProfile(metricsAddr, "profile?seconds=5", filepath.Join(b.profiles, "onefile.cpu.pprof"))
		}()
	}
	lat, floor, err := b.putToFile(cli, prefix, n, writes, func(int) string { return file })
	if err != nil {
		return err
	}
	rssAfter, _ := procRSS(cmd.Process.Pid)
	if cpuDone != nil {
		if err := <-cpuDone; err != nil {
			return err
		}
	}
	confdRSS, confdP50 := "confd 0.17: 37 MB (issue 13, not this run)", "confd 0.17: about 260 ms (issue 13, not this run)"
	if b.confd != "" {
		c, err := b.runConfd(prefix, n, writes)
		if err != nil {
			return fmt.Errorf("confd: %w", err)
		}
		confdRSS = fmt.Sprintf("confd in this run: %.1f MB", c.rss)
		confdP50 = fmt.Sprintf("confd in this run: %.0f ms", c.p50)
		b.add("onefile", "confd RSS after converging", c.rss, "MB", 0, "", b.confd)
		b.add("onefile", "confd event-to-file p50", c.p50, "ms", 0, "", b.confd)
	}
	b.add("onefile", "RSS after converging 10,000 sites", rss, "MB", 35, "<= 35 MB and <= confd", fmt.Sprintf("%s; %.1f MB after %d events", confdRSS, rssAfter, writes))
	s, f := sortDurations(lat), sortDurations(floor)
	b.add("onefile", "event-to-file p50", ms(percentile(s, 50)), "ms", 15, "<= 15 ms",
		fmt.Sprintf("%s; one etcd put p50 %.2f ms", confdP50, ms(percentile(f, 50))))
	b.add("onefile", "event-to-file p90", ms(percentile(s, 90)), "ms", 0, "", "")
	return nil
}

// putToFile changes writes sites one at a time and measures from each put
// returning until fileOf(site) holds the change, and each put's own round
// trip (the floor).
func (b *bench) putToFile(cli *clientv3.Client, prefix string, n, writes int, fileOf func(int) string) (lat, floor []time.Duration, err error) {
	for i := 0; i < writes; i++ {
		site := (i * 7919) % n
		domain := fmt.Sprintf("change%d.example", i)
		before := time.Now()
		if _, err := cli.Put(b.ctx, fmt.Sprintf("%s/objects/sites/s%06d", prefix, site), siteValue(site, domain)); err != nil {
			return nil, nil, err
		}
		t0 := time.Now()
		floor = append(floor, t0.Sub(before))
		file, want := fileOf(site), []byte(domain)
		if err := waitFor(30*time.Second, 100*time.Microsecond, func() bool {
			got, _ := os.ReadFile(file)
			return bytes.Contains(got, want)
		}); err != nil {
			return nil, nil, fmt.Errorf("write %d: %w", i, err)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(20 * time.Millisecond) // let the run finish (status, unlock)
	}
	return lat, floor, nil
}

// waitMetric waits until the agent's /metrics reports name, i.e. a run
// finished (status written, lock released).
func waitMetric(addr, name string, timeout time.Duration) error {
	return waitFor(timeout, 20*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return bytes.Contains(raw, []byte("\n"+name+"{")) || bytes.Contains(raw, []byte("\n"+name+" "))
	})
}

// fetchProfile saves /debug/pprof/<what> of the agent to path.
func fetchProfile(addr, what, path string) error {
	resp, err := http.Get("http://" + addr + "/debug/pprof/" + what)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o644)
}
