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
// and converge: resident memory, and CPU time over the idle period. Both
// builds are measured: the agent's (without the etcd server) and the full
// one (with --embedded-etcd for trying ccm out).
func (b *bench) footprint() error {
	const n = 1000
	cli, err := b.sites("/fp", n)
	if err != nil {
		return err
	}
	defer cli.Close()
	dir, err := b.configDir("footprint", map[string]string{"nginx.yaml": vhostYAML})
	if err != nil {
		return err
	}
	full, err := b.idleAgent("full", b.ccmFull, true, dir, n)
	if err != nil {
		return err
	}
	agent, err := b.idleAgent("agent", b.ccm, true, dir, n)
	if err != nil {
		return err
	}
	before, beforeCPU := "", ""
	if b.baseline != "" {
		base, err := b.idleAgent("baseline", b.baseline, false, dir, n)
		if err != nil {
			return err
		}
		before = fmt.Sprintf("; before (%s): %.1f MB", b.baselineRev, base.rss)
		beforeCPU = fmt.Sprintf("; before (%s): %.2f s", b.baselineRev, base.cpuPerMinute)
	}
	b.add("footprint", "idle agent RSS, 1,000 objects", agent.rss, "MB", 25, "<= 25 MB",
		fmt.Sprintf("%.1f MB after %s idle; the full build (with the etcd server): %.1f MB%s; confd idle: 26 MB (reference)", agent.rssAfter, b.idle, full.rss, before))
	b.add("footprint", "idle CPU per minute", agent.cpuPerMinute, "s", 0.1, "< 0.1 s", fmt.Sprintf("measured over %s%s", b.idle, beforeCPU))
	b.add("footprint", "binary size", agent.size, "MB", 0, "", fmt.Sprintf("the full build: %.1f MB", full.size))
	return nil
}

type idleFigures struct {
	rss, rssAfter, cpuPerMinute, size float64
}

// idleAgent starts the binary ccm as an agent on the objects under /fp
// (with the systemd unit's settings when unit is set), waits for n files
// and measures it.
func (b *bench) idleAgent(name, ccm string, unit bool, configDir string, n int) (idleFigures, error) {
	var fig idleFigures
	st, err := os.Stat(ccm)
	if err != nil {
		return fig, err
	}
	fig.size = float64(st.Size()) / (1 << 20)
	root := filepath.Join(b.work, "footprint", name, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fig, err
	}
	cmd := exec.Command(ccm, "agent", "--debounce", "0s")
	cmd.Env = os.Environ()
	if unit {
		cmd.Env = append(cmd.Env, unitEnv()...)
	}
	cmd.Env = append(cmd.Env, "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX=/fp", "CCM_CONFIG_DIR="+configDir, "CCM_ROOT="+root,
		"CCM_STATE_DIR="+filepath.Join(b.work, "footprint", name, "state"), "CCM_NODE=idle-"+name, "CCM_LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		return fig, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	sites := filepath.Join(root, "etc/nginx/sites-enabled")
	if err := waitFor(2*time.Minute, 20*time.Millisecond, func() bool { return countFiles(sites) == n }); err != nil {
		return fig, err
	}
	time.Sleep(2 * time.Second) // the run finishes: status, unlock
	if fig.rss, err = procRSS(cmd.Process.Pid); err != nil {
		return fig, err
	}
	cpu0, err := procCPU(cmd.Process.Pid)
	if err != nil {
		return fig, err
	}
	time.Sleep(b.idle)
	cpu1, err := procCPU(cmd.Process.Pid)
	if err != nil {
		return fig, err
	}
	fig.rssAfter, _ = procRSS(cmd.Process.Pid)
	fig.cpuPerMinute = (cpu1 - cpu0) * 60 / b.idle.Seconds()
	return fig, nil
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
