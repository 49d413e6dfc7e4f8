package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// measured is one ccm process: wall time and peak RSS.
type measured struct {
	wall time.Duration
	rss  float64 // MB
	code int
}

// ccmRun runs the ccm binary and measures it.
func (b *bench) ccmRun(env []string, args ...string) (measured, error) {
	cmd := exec.Command(b.ccm, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return measured{}, err
	}
	// Peak RSS: VmHWM of the child's own address space, polled until it
	// exits. (rusage's maxrss would carry this process's size across the
	// fork and exec.)
	var peak float64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if v, err := procStatusMB(cmd.Process.Pid, "VmHWM:"); err == nil {
				peak = max(peak, v)
			} else {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	err := cmd.Wait()
	<-done
	m := measured{wall: time.Since(start), rss: peak}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		m.code = exit.ExitCode()
	} else if err != nil {
		return m, err
	}
	if m.code == 1 {
		return m, fmt.Errorf("ccm %s: %s", strings.Join(args, " "), stderr.String())
	}
	return m, nil
}

// throughput: plan and apply --once of N vhosts (one file per site) for
// each scale, and one file rendered from 100,000 objects. The baseline is
// writing the same number of files with os.WriteFile in a loop.
func (b *bench) throughput() error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	dir, err := b.configDir("throughput", map[string]string{"nginx.yaml": vhostYAML})
	if err != nil {
		return err
	}
	for _, n := range b.scale {
		prefix := fmt.Sprintf("/tp%d", n)
		if err := b.load(cli, prefix, "sites", n, func(i int) string { return siteValue(i, fmt.Sprintf("s%d.example", i)) }); err != nil {
			return err
		}
		root := filepath.Join(b.work, fmt.Sprintf("tp%d", n), "root")
		if err := os.MkdirAll(root, 0o755); err != nil {
			return err
		}
		env := []string{"CCM_ENDPOINTS=" + b.etcdURL, "CCM_PREFIX=" + prefix, "CCM_CONFIG_DIR=" + dir, "CCM_ROOT=" + root,
			"CCM_STATE_DIR=" + filepath.Join(b.work, fmt.Sprintf("tp%d", n), "state"), "CCM_NODE=bench", "CCM_LOG_LEVEL=error"}
		plan, err := b.ccmRun(env, "plan")
		if err != nil {
			return err
		}
		apply, err := b.ccmRun(env, "apply", "--once")
		if err != nil {
			return err
		}
		again, err := b.ccmRun(env, "plan")
		if err != nil {
			return err
		}
		if again.code != 0 {
			return fmt.Errorf("plan after apply found changes (exit %d)", again.code)
		}
		base, err := naiveWrite(filepath.Join(b.work, fmt.Sprintf("naive%d", n)), n)
		if err != nil {
			return err
		}
		label := fmt.Sprintf("%dk vhosts", n/1000)
		planTarget, applyTarget := "", ""
		if n == 10000 {
			planTarget, applyTarget = "< 1 s", "< 3 s"
		}
		b.add("throughput", "plan "+label, plan.wall.Seconds(), "s", 1, planTarget,
			fmt.Sprintf("%.0f objects/s, peak RSS %.0f MB", float64(n)/plan.wall.Seconds(), plan.rss))
		b.add("throughput", "apply --once "+label, apply.wall.Seconds(), "s", 3, applyTarget,
			fmt.Sprintf("%.0f objects/s, peak RSS %.0f MB; %.1fx writing the files naively (%.2f s, no fsync)",
				float64(n)/apply.wall.Seconds(), apply.rss, apply.wall.Seconds()/base.Seconds(), base.Seconds()))
		b.add("throughput", "plan, nothing to do, "+label, again.wall.Seconds(), "s", 0, "", fmt.Sprintf("peak RSS %.0f MB", again.rss))
	}
	return b.oneBigFile(cli)
}

// oneBigFile: one file listing 100,000 users.
func (b *bench) oneBigFile(cli interface{ Close() error }) error {
	n := b.scale[len(b.scale)-1]
	c, err := b.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := b.load(c, "/big", "users", n, func(i int) string { return fmt.Sprintf(`{"uid":%d,"shell":"/bin/bash"}`, 10000+i) }); err != nil {
		return err
	}
	dir, err := b.configDir("big", map[string]string{"users.yaml": `subscribes: [users]
files:
  - path: /etc/passwd.ccm
    content: "{{ range .Objects.users }}{{ .ID }}:x:{{ .Data.uid }}:{{ .Data.uid }}::/home/{{ .ID }}:{{ .Data.shell }}\n{{ end }}"
`})
	if err != nil {
		return err
	}
	root := filepath.Join(b.work, "big", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	env := []string{"CCM_ENDPOINTS=" + b.etcdURL, "CCM_PREFIX=/big", "CCM_CONFIG_DIR=" + dir, "CCM_ROOT=" + root,
		"CCM_STATE_DIR=" + filepath.Join(b.work, "big", "state"), "CCM_NODE=bench", "CCM_LOG_LEVEL=error"}
	apply, err := b.ccmRun(env, "apply", "--once")
	if err != nil {
		return err
	}
	b.add("throughput", fmt.Sprintf("apply --once, one file from %dk objects", n/1000), apply.wall.Seconds(), "s", 0, "",
		fmt.Sprintf("%.0f objects/s, peak RSS %.0f MB", float64(n)/apply.wall.Seconds(), apply.rss))
	return nil
}

// naiveWrite writes n files of a vhost's size with os.WriteFile: the floor
// of putting n files on this disk.
func naiveWrite(dir string, n int) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	content := bytes.Repeat([]byte("x"), 600)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("s%06d.conf", i)), content, 0o644); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}
