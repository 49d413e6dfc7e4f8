package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// driftYAML spreads the managed files over driftDirs directories, as
// nginx, PHP-FPM and cron files are spread on a node.
const driftYAML = `subscribes: [sites]
files:
  - path: '/srv/{{ .Object.Data.dir }}/{{ .Object.ID }}.conf'
    for_each: sites
    content: "server {{ .Object.ID }} {{ .Object.Data.dir }}\n"
`

const driftDirs = 100

// driftAgent is a ccm agent process with a metrics endpoint.
type driftAgent struct {
	cmd     *exec.Cmd
	metrics string
	root    string
}

func (d *driftAgent) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.cmd.Wait()
}

// metric reads one unlabelled metric, or the sum of a labelled one.
func (d *driftAgent) metric(name string) float64 {
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// startDriftAgent starts the agent binary on the objects under prefix with
// --drift mode, and waits for n files.
func (b *bench) startDriftAgent(name, prefix, configDir, mode string, n int) (*driftAgent, error) {
	root := filepath.Join(b.work, "drift", name, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.ccm, "agent", "--debounce", "0s", "--metrics-addr", addr, "--drift", mode)
	cmd.Env = append(append(os.Environ(), unitEnv()...), "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX="+prefix, "CCM_CONFIG_DIR="+configDir,
		"CCM_ROOT="+root, "CCM_STATE_DIR="+filepath.Join(b.work, "drift", name, "state"), "CCM_NODE=drift-"+name, "CCM_LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &driftAgent{cmd: cmd, metrics: addr, root: root}
	if err := waitFor(5*time.Minute, 50*time.Millisecond, func() bool { return d.metric("ccm_runs_total") >= 1 && b.driftFiles(root) == n }); err != nil {
		d.stop()
		return nil, fmt.Errorf("%s: initial converge: %w", name, err)
	}
	return d, nil
}

// driftFiles counts the managed files under root.
func (b *bench) driftFiles(root string) int {
	n := 0
	for i := 0; i < driftDirs; i++ {
		n += countFiles(filepath.Join(root, "srv", fmt.Sprintf("d%02d", i)))
	}
	return n
}

// driftFile is site i's path and content.
func driftFile(root string, i int) (string, []byte) {
	dir := fmt.Sprintf("d%02d", i%driftDirs)
	id := fmt.Sprintf("s%06d", i)
	return filepath.Join(root, "srv", dir, id+".conf"), []byte(fmt.Sprintf("server %s %s\n", id, dir))
}

// drift: 10,000 managed files in 100 directories; a hand edit of one
// file at a time, measured until the file is back; the watches used; the
// idle agent with and without the watcher; then an editor-like writer
// fighting 100 files for churn.
func (b *bench) drift() error {
	n := 10000
	if b.quick {
		n = 2000
	}
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := b.load(cli, "/drift", "sites", n, func(i int) string { return fmt.Sprintf(`{"dir":"d%02d"}`, i%driftDirs) }); err != nil {
		return err
	}
	dir, err := b.configDir("drift", map[string]string{"sites.yaml": driftYAML})
	if err != nil {
		return err
	}
	off, err := b.startDriftAgent("off", "/drift", dir, "off", n)
	if err != nil {
		return err
	}
	offIdle, err := b.idleFigures(off)
	off.stop()
	if err != nil {
		return err
	}
	on, err := b.startDriftAgent("repair", "/drift", dir, "repair", n)
	if err != nil {
		return err
	}
	defer on.stop()
	if err := waitFor(time.Minute, 20*time.Millisecond, func() bool { return on.metric("ccm_drift_watches") == driftDirs }); err != nil {
		return fmt.Errorf("watches: %v (have %v)", err, on.metric("ccm_drift_watches"))
	}
	onIdle, err := b.idleFigures(on)
	if err != nil {
		return err
	}
	lat, err := b.driftLatency(on, n, 300)
	if err != nil {
		return err
	}
	slices.Sort(lat)
	note := fmt.Sprintf("%d managed files in %d directories; %d hand edits (append, rename over, delete, chmod), one at a time", n, driftDirs, len(lat))
	b.add("drift", "detect and repair, median", percentile(lat, 50).Seconds()*1000, "ms", 1000, "<= 1 s", note)
	b.add("drift", "detect and repair, p99", percentile(lat, 99).Seconds()*1000, "ms", 3000, "<= 3 s", note)
	b.add("drift", "inotify watches", on.metric("ccm_drift_watches"), "watches", driftDirs, fmt.Sprintf("<= %d (managed directories)", driftDirs), "")
	b.add("drift", "idle RSS with the watcher", onIdle.rss, "MB", offIdle.rss*1.1, "within 10% of --drift off", fmt.Sprintf("--drift off: %.1f MB", offIdle.rss))
	b.add("drift", "idle CPU per minute with the watcher", onIdle.cpuPerMinute, "s", max(offIdle.cpuPerMinute*1.1, 0.01), "within 10% of --drift off (or 10 ms)",
		fmt.Sprintf("--drift off: %.3f s; measured over %s", offIdle.cpuPerMinute, b.idle))
	return b.driftChurn(on, n)
}

// idleFigures measures an agent's RSS and CPU over the idle period.
func (b *bench) idleFigures(d *driftAgent) (idleFigures, error) {
	var fig idleFigures
	time.Sleep(2 * time.Second) // the run's last steps
	pid := d.cmd.Process.Pid
	cpu0, err := procCPU(pid)
	if err != nil {
		return fig, err
	}
	time.Sleep(b.idle)
	cpu1, err := procCPU(pid)
	if err != nil {
		return fig, err
	}
	fig.cpuPerMinute = (cpu1 - cpu0) * 60 / b.idle.Seconds()
	fig.rss, err = procRSS(pid)
	return fig, err
}

// driftLatency makes edits hand edits, each to a file not edited before
// (no backoff), and measures from the edit to the file being whole again.
func (b *bench) driftLatency(d *driftAgent, n, edits int) ([]time.Duration, error) {
	var lat []time.Duration
	for i := 0; i < edits; i++ {
		site := (i * 7919) % n
		path, want := driftFile(d.root, site)
		switch i % 4 {
		case 0: // append
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return nil, err
			}
			_, _ = f.WriteString("# hand edit\n")
			f.Close()
		case 1: // an editor's save: a temporary file renamed over
			tmp := path + ".swp"
			if err := os.WriteFile(tmp, []byte("edited\n"), 0o644); err != nil {
				return nil, err
			}
			if err := os.Rename(tmp, path); err != nil {
				return nil, err
			}
		case 2:
			if err := os.Remove(path); err != nil {
				return nil, err
			}
		case 3:
			if err := os.Chmod(path, 0o600); err != nil {
				return nil, err
			}
		}
		t0 := time.Now()
		if err := waitFor(30*time.Second, 200*time.Microsecond, func() bool {
			st, err := os.Stat(path)
			if err != nil || st.Mode().Perm() != 0o644 {
				return false
			}
			got, _ := os.ReadFile(path)
			return string(got) == string(want)
		}); err != nil {
			return nil, fmt.Errorf("edit %d of %s: %w", i, path, err)
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// driftChurn runs an editor-like writer on 100 files for b.churn: every
// file is saved (temporary file, rename over) about once a second. No
// run may happen (a failed repair would ask for one), and every path must
// end in backoff, repaired a bounded number of times.
func (b *bench) driftChurn(d *driftAgent, n int) error {
	if b.churn <= 0 {
		return nil
	}
	const files = 100
	runs0, repairs0 := d.metric("ccm_runs_total"), d.metric("ccm_drift_repairs_total")
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(b.churn)
	writes := 0
	for time.Now().Before(deadline) {
		site := 1 + rng.IntN(files)*(n/files-1) // not the latency's files
		path, _ := driftFile(d.root, site)
		tmp := path + ".churn"
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("churn %d\n", writes)), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		writes++
		time.Sleep(10 * time.Millisecond) // 100 saves a second over 100 files
	}
	runs := d.metric("ccm_runs_total") - runs0
	repairs := d.metric("ccm_drift_repairs_total") - repairs0
	backoff := d.metric("ccm_drift_backoff_paths")
	note := fmt.Sprintf("%s of an editor-like writer on %d files: %d saves, %.0f repairs", b.churn, files, writes, repairs)
	b.add("drift churn", "runs that were not a repair", runs, "runs", 0, "0", note)
	b.addAtLeast("drift churn", "paths in backoff at the end", backoff, "paths", files, fmt.Sprintf("%d", files), note)
	// Storm repairs at full speed, then 10 s doubling up to 5 min.
	bound := float64(files) * (5 + backoffSteps(b.churn))
	b.add("drift churn", "repairs", repairs, "repairs", bound, fmt.Sprintf("<= %.0f (backoff)", bound), note)
	return nil
}

// backoffSteps is how many backed-off repairs one path can get in d.
func backoffSteps(d time.Duration) float64 {
	steps, delay := 0.0, 10*time.Second
	for d > 0 {
		d -= delay
		steps++
		delay = min(2*delay, 5*time.Minute)
	}
	return steps
}
