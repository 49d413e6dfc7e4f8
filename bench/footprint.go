package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// footprint: an idle `ccm agent` process with 1,000 objects, after start
// and converge: resident memory, and CPU time over the idle period.
func (b *bench) footprint() error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	const n = 1000
	if err := b.load(cli, "/fp", "sites", n, func(i int) string { return siteValue(i, fmt.Sprintf("s%d.example", i)) }); err != nil {
		return err
	}
	dir, err := b.configDir("footprint", map[string]string{"nginx.yaml": vhostYAML})
	if err != nil {
		return err
	}
	root := filepath.Join(b.work, "footprint", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(b.ccm, "agent", "--debounce", "0s")
	cmd.Env = append(os.Environ(), "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX=/fp", "CCM_CONFIG_DIR="+dir, "CCM_ROOT="+root,
		"CCM_STATE_DIR="+filepath.Join(b.work, "footprint", "state"), "CCM_NODE=idle", "CCM_LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	sites := filepath.Join(root, "etc/nginx/sites-enabled")
	if err := waitFor(2*time.Minute, 20*time.Millisecond, func() bool { return countFiles(sites) == n }); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // the run finishes: status, unlock
	rss, err := procRSS(cmd.Process.Pid)
	if err != nil {
		return err
	}
	cpu0, err := procCPU(cmd.Process.Pid)
	if err != nil {
		return err
	}
	time.Sleep(b.idle)
	cpu1, err := procCPU(cmd.Process.Pid)
	if err != nil {
		return err
	}
	rss1, _ := procRSS(cmd.Process.Pid)
	perMinute := (cpu1 - cpu0) * 60 / b.idle.Seconds()
	b.add("footprint", "idle agent RSS, 1,000 objects", rss, "MB", 20, "< 20 MB",
		fmt.Sprintf("%.1f MB after %s idle; confd idle: 26 MB (reference)", rss1, b.idle))
	b.add("footprint", "idle CPU per minute", perMinute, "s", 0.1, "< 0.1 s", fmt.Sprintf("measured over %s", b.idle))
	return nil
}

// procRSS returns VmRSS in MB.
func procRSS(pid int) (float64, error) { return procStatusMB(pid, "VmRSS:") }

// procStatusMB returns a kB field of /proc/pid/status in MB.
func procStatusMB(pid int, field string) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, field) {
			kb, err := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for %d", field, pid)
}

// procCPU returns user+system CPU seconds.
func procCPU(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
	f := strings.Fields(rest)
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100, nil // clock ticks (USER_HZ = 100)
}
