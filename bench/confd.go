package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// unitFile is the systemd unit that ships; the agent processes the bench
// starts get its Go runtime settings, so that the figures are the ones a
// node sees.
const unitFile = "contrib/systemd/ccm.service"

// unitEnv returns the GO* variables the unit's Environment= lines set.
func unitEnv() []string {
	f, err := os.Open(unitFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Environment=")
		if ok && strings.HasPrefix(v, "GO") {
			env = append(env, v)
		}
	}
	return env
}

// confdResult is what runConfd measured.
type confdResult struct {
	rss float64 // MB after converging
	p50 float64 // ms, event to file
}

// runConfd renders the same 10,000 sites into one file with confd in watch
// mode against the same etcd, and measures it as onefile measures ccm.
func (b *bench) runConfd(prefix string, n, writes int) (confdResult, error) {
	dir := filepath.Join(b.work, "confd")
	out := filepath.Join(dir, "sites.map")
	for _, d := range []string{"conf.d", "templates"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return confdResult{}, err
		}
	}
	toml := fmt.Sprintf("[template]\nsrc = \"sites.map.tmpl\"\ndest = %q\nkeys = [\"/sites\"]\n", out)
	tmpl := "# managed by confd\n{{range gets \"/sites/*\"}}{{$d := json .Value}}{{index $d.domains 0}} {{base .Key}} {{$d.user}};\n{{end}}"
	if err := os.WriteFile(filepath.Join(dir, "conf.d", "sites.toml"), []byte(toml), 0o644); err != nil {
		return confdResult{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "sites.map.tmpl"), []byte(tmpl), 0o644); err != nil {
		return confdResult{}, err
	}
	cmd := exec.Command(b.confd, "-backend", "etcdv3", "-node", b.etcdURL, "-prefix", prefix+"/objects",
		"-confdir", dir, "-watch", "-log-level", "error")
	if err := cmd.Start(); err != nil {
		return confdResult{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	last := []byte(fmt.Sprintf(" s%06d ", n-1))
	if err := waitFor(2*time.Minute, 10*time.Millisecond, func() bool {
		got, _ := os.ReadFile(out)
		return bytes.Contains(got, last)
	}); err != nil {
		return confdResult{}, fmt.Errorf("initial render: %w", err)
	}
	time.Sleep(2 * time.Second)
	rss, err := procRSS(cmd.Process.Pid)
	if err != nil {
		return confdResult{}, err
	}
	cli, err := b.client()
	if err != nil {
		return confdResult{}, err
	}
	defer cli.Close()
	lat, _, err := b.putToFile(cli, prefix, "confd", n, writes, func(int) string { return out })
	if err != nil {
		return confdResult{}, err
	}
	return confdResult{rss: rss, p50: ms(percentile(sortDurations(lat), 50))}, nil
}
