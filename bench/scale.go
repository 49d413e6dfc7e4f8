package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/objects"
)

// fleetSizes are how many agent processes the scale scenario runs, one
// fleet after the other.
var fleetSizes = flag.String("fleet", "200,500", "agent processes of the scale scenario, a comma-separated `LIST` of sizes")

// scaleTimeout bounds one rollout of the scale scenario.
var scaleTimeout = flag.Duration("fleet-timeout", 5*time.Minute, "longest rollout of the scale scenario")

// scaleParts picks the parts of the scale scenario (-fleet-only).
var scaleParts = flag.String("fleet-only", "", "run only this part of the scale scenario: rollout, or fanout (default both)")

// fleet (the scale scenario): for each of fleetSizes, that many agent processes (the node build, the systemd unit's
// environment) on a 3-member Debian etcd on loopback, --debounce 1s, a
// trivial configuration. Each build (this one, and the baseline's) runs a
// serial rollout and one in batches of a twentieth of the fleet: the time from one
// put until every node reported that revision converged, and the CPU
// time the three etcd processes spent on it. Then the time ccm status
// --json takes, and the view the dashboard reads, at that size; and this
// build's fan-out (bench/fanout.go): an action to every node, and to
// the half of the fleet a label picks.
func (b *bench) fleet() error {
	if _, err := exec.LookPath("etcd"); err != nil {
		return errors.New("needs Debian's etcd (apt-get install etcd-server), as .ci/run installs it")
	}
	switch *scaleParts {
	case "", "rollout", "fanout":
	default:
		return fmt.Errorf("-fleet-only: %q is neither rollout nor fanout", *scaleParts)
	}
	builds := []struct{ name, bin string }{{"this build", b.ccm}}
	if b.baseline != "" && *scaleParts != "fanout" {
		builds = append(builds, struct{ name, bin string }{"before (" + b.baselineRev + ")", b.baseline})
	}
	for _, size := range strings.Split(*fleetSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(size))
		if err != nil || n < 1 {
			return fmt.Errorf("-fleet: %q is no number of agents", size)
		}
		if *scaleParts == "fanout" {
			if _, err := b.scaleFleet(builds[0].name, builds[0].bin, n, api.Serial); err != nil {
				return fmt.Errorf("fan-out: %w", err)
			}
			continue
		}
		batch := max(n/20, 2)
		for _, build := range builds {
			var serial time.Duration
			for _, strategy := range []api.Rollout{api.Serial, {Batch: batch}} {
				took, err := b.scaleFleet(build.name, build.bin, n, strategy)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", build.name, strategy, err)
				}
				if strategy.Slots() == 1 {
					serial = took
					continue
				}
				target, most := "", 0.0
				if build.name == "this build" && n >= 500 {
					target, most = "<= 0.5x serial", 0.5
				}
				b.add("scale", fmt.Sprintf("%d agent processes: batches of %d against serial (%s)", n, batch, build.name), took.Seconds()/serial.Seconds(), "x", most, target, "put to all converged, each on a fresh fleet")
			}
		}
	}
	return nil
}

// fleetRun is a fleet of agent processes on a fresh 3-member etcd.
type fleetRun struct {
	etcd   *members
	cli    *clientv3.Client
	names  []string
	procs  []*exec.Cmd
	logs   []*os.File
	home   string
	prefix string
}

// startFleet starts n agents of bin on a fresh etcd, under strategy.
func (b *bench) startFleet(bin string, n int, strategy api.Rollout) (_ *fleetRun, err error) {
	f := &fleetRun{prefix: "/scale", home: filepath.Join(b.work, "scale")}
	if f.etcd, err = startMembers(filepath.Join(b.work, "scale-etcd"), 3); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	f.cli, err = clientv3.New(clientv3.Config{Endpoints: f.etcd.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return f, err
	}
	raw, _ := json.Marshal(strategy)
	if _, err := f.cli.Put(b.ctx, f.prefix+"/rollout", string(raw)); err != nil {
		return f, err
	}
	dir, err := b.configDir("scale", map[string]string{"motd.yaml": `subscribes: [motd]
files:
  - path: /etc/motd
    content: "{{ range .Objects.motd }}{{ .Data.text }}{{ end }}\n"
`})
	if err == nil {
		err = withFanoutHandler(dir)
	}
	if err != nil {
		return f, err
	}
	for i := range n {
		name := fmt.Sprintf("n%03d", i)
		home := filepath.Join(f.home, name)
		p := exec.Command(bin, "agent", "--endpoints", strings.Join(f.etcd.endpoints, ","), "--prefix", f.prefix,
			"--node", name, "--config-dir", dir, "--root", filepath.Join(home, "root"), "--state-dir", filepath.Join(home, "state"),
			"--debounce", "1s", "--log-level", "error")
		p.Env = append(os.Environ(), "CCM_LOG_FORMAT=json", "GOGC=50") // the unit's environment
		if err := os.MkdirAll(filepath.Join(home, "root"), 0o755); err != nil {
			return f, err
		}
		logFile, err := os.Create(filepath.Join(home, "log"))
		if err != nil {
			return f, err
		}
		f.logs = append(f.logs, logFile)
		p.Stderr = logFile
		if err := p.Start(); err != nil {
			return f, err
		}
		f.procs, f.names = append(f.procs, p), append(f.names, name)
	}
	return f, nil
}

// stop ends the agents, then etcd, and removes their files.
func (f *fleetRun) stop() {
	for _, p := range f.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range f.procs {
		_, _ = p.Process.Wait()
	}
	for _, l := range f.logs {
		_ = l.Close()
	}
	if f.cli != nil {
		f.cli.Close()
	}
	f.etcd.stop()
	_ = os.RemoveAll(f.home)
}

// scaleFleet measures one build under one strategy on a fresh etcd: the
// rollout, and for this build's serial fleet ccm status, the view and the
// fan-out (as -fleet-only picks).
func (b *bench) scaleFleet(build, bin string, n int, strategy api.Rollout) (time.Duration, error) {
	// A fleet that fails (a timeout at 500 agents on a loaded machine)
	// ends the run before the table is printed: each fleet's results go
	// to stderr as it ends.
	from := len(b.report.Results)
	defer func() {
		for _, r := range b.report.Results[from:] {
			fmt.Fprintf(os.Stderr, "   %s: %v %s (%s)\n", r.Metric, r.Value, r.Unit, r.Note)
		}
	}()
	f, err := b.startFleet(bin, n, strategy)
	if err != nil {
		return 0, err
	}
	defer f.stop()
	var took time.Duration
	if *scaleParts != "fanout" {
		if took, err = b.scaleRollout(f, build, bin, n, strategy); err != nil {
			return 0, err
		}
	}
	if build != "this build" || strategy.Slots() > 1 || *scaleParts == "rollout" {
		return took, nil
	}
	return took, b.fanout(f)
}

// scaleRollout measures one rollout of a fleet, after a warm-up one, and
// returns how long it took.
func (b *bench) scaleRollout(f *fleetRun, build, bin string, n int, strategy api.Rollout) (time.Duration, error) {
	cli, etcd, prefix := f.cli, f.etcd, f.prefix
	rollout := func(text string) (time.Duration, time.Duration, error) {
		cpu := etcd.cpu()
		start := time.Now()
		put, err := cli.Put(b.ctx, objects.Key(prefix, "motd", "m"), fmt.Sprintf(`{"text":%q}`, text))
		if err != nil {
			return 0, 0, err
		}
		if err := allConverged(b.ctx, cli, prefix, n, put.Header.Revision, *scaleTimeout); err != nil {
			log, _ := os.ReadFile(filepath.Join(f.home, "n000", "log"))
			return 0, 0, fmt.Errorf("%w; the first agent's log:\n%s", err, log[max(0, len(log)-3000):])
		}
		return time.Since(start), etcd.cpu() - cpu, nil
	}
	if _, _, err := rollout("warm-up"); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	took, cpu, err := rollout("measured")
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("%d agent processes, %s", n, strategy)
	target, most := "", 0.0
	if build == "this build" && strategy.Slots() == 1 && n >= 500 {
		target, most = "<= 15 s", 15
	}
	b.add("scale", what+": put to all converged ("+build+")", took.Seconds(), "s", most, target, fmt.Sprintf("3-member Debian etcd, --debounce 1s; %.1f ms per node", ms(took)/float64(n)))
	b.add("scale", what+": etcd CPU per rollout ("+build+")", cpu.Seconds(), "s", 0, "", "user+system of the 3 members")
	if build != "this build" || strategy.Slots() > 1 {
		return took, nil
	}
	// The lock's own round trip on this etcd, with the fleet idle: an
	// uncontended acquire and release, the floor of a serial handoff.
	rt, err := lockRoundTripOn(cli, prefix+"-floor")
	if err != nil {
		return 0, err
	}
	target, most = "", 0
	if n >= 500 {
		target, most = "<= 3x", 3
	}
	b.add("scale", what+": per node / lock round trip", ms(took)/float64(n)/ms(rt), "x", most, target,
		fmt.Sprintf("%.1f ms per node; an uncontended acquire and release on the same etcd, fleet idle: %.2f ms", ms(took)/float64(n), ms(rt)))
	start := time.Now()
	out, err := exec.Command(bin, "status", "--json", "--endpoints", strings.Join(etcd.endpoints, ","), "--prefix", prefix).Output()
	if err != nil && len(out) == 0 {
		return 0, fmt.Errorf("ccm status: %w", err)
	}
	b.add("scale", fmt.Sprintf("%d nodes: ccm status --json", n), ms(time.Since(start)), "ms", 0, "", fmt.Sprintf("%d bytes", len(out)))
	start = time.Now()
	if _, err := cluster.New(cli, cluster.Options{Prefix: prefix}).View(b.ctx); err != nil {
		return 0, err
	}
	b.add("scale", fmt.Sprintf("%d nodes: the view the dashboard reads", n), ms(time.Since(start)), "ms", 0, "", "cluster.View, in process")
	return took, nil
}

// allConverged waits until n nodes report rev (or later) converged,
// following their status keys with one watch.
func allConverged(ctx context.Context, cli *clientv3.Client, prefix string, n int, rev int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	keys := api.NewKeys(prefix)
	done := map[string]bool{}
	note := func(key string, value []byte) {
		var s api.Status
		if strings.HasSuffix(key, "/status") && json.Unmarshal(value, &s) == nil && s.Result == api.ResultConverged && s.Converged >= rev {
			done[key] = true
		}
	}
	resp, err := cli.Get(ctx, keys.NodesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range resp.Kvs {
		note(string(kv.Key), kv.Value)
	}
	wch := cli.Watch(ctx, keys.NodesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for len(done) < n {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			return fmt.Errorf("%d of %d nodes converged revision %d: %v", len(done), n, rev, cmp.Or(ctx.Err(), wr.Err()))
		}
		for _, ev := range wr.Events {
			note(string(ev.Kv.Key), ev.Kv.Value)
		}
	}
	return nil
}

// members is a Debian etcd cluster of processes on loopback.
type members struct {
	endpoints []string
	procs     []*exec.Cmd
	dir       string
}

// startMembers starts n etcd members with data under dir, and waits until
// the cluster answers.
func startMembers(dir string, n int) (*members, error) {
	m := &members{dir: dir}
	var peers, peerURLs []string
	for i := range n {
		client, err := freeAddr()
		if err != nil {
			return nil, err
		}
		peer, err := freeAddr()
		if err != nil {
			return nil, err
		}
		m.endpoints = append(m.endpoints, "http://"+client)
		peerURLs = append(peerURLs, "http://"+peer)
		peers = append(peers, fmt.Sprintf("m%d=http://%s", i, peer))
	}
	for i := range n {
		p := exec.Command("etcd", "--name", fmt.Sprintf("m%d", i), "--data-dir", filepath.Join(dir, strconv.Itoa(i)),
			"--listen-client-urls", m.endpoints[i], "--advertise-client-urls", m.endpoints[i],
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-state", "new", "--log-level", "error")
		if err := p.Start(); err != nil {
			m.stop()
			return nil, err
		}
		m.procs = append(m.procs, p)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: m.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		m.stop()
		return nil, err
	}
	defer cli.Close()
	err = waitFor(time.Minute, 100*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "health")
		return err == nil
	})
	if err != nil {
		m.stop()
		return nil, fmt.Errorf("etcd members: %w", err)
	}
	return m, nil
}

// cpu is the user and system CPU time the members used so far.
func (m *members) cpu() time.Duration { return procsCPU(m.procs) }

// procsCPU is the user and system CPU time processes used so far.
func procsCPU(procs []*exec.Cmd) time.Duration {
	var total time.Duration
	for _, p := range procs {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Process.Pid))
		if err != nil {
			continue
		}
		// The fields after the command's closing parenthesis; utime and
		// stime are the 14th and 15th of the line, in clock ticks (100/s).
		fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		for _, f := range fields[11:13] {
			ticks, _ := strconv.ParseInt(f, 10, 64)
			total += time.Duration(ticks) * 10 * time.Millisecond
		}
	}
	return total
}

func (m *members) stop() {
	for _, p := range m.procs {
		_ = p.Process.Kill()
		_, _ = p.Process.Wait()
	}
	_ = os.RemoveAll(m.dir)
}
