package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ccm-dev/ccm/internal/cluster"
)

// cli: commands as an operator runs them from a shell, each a new
// process: ccm action run (one node, a handler that exits at once),
// ccm status, and ccm version (start-up and package initialisation
// alone, no etcd). Each build is measured in turn within every round, so
// that the machine's load falls on all alike: this build as a node runs
// it (the Debian package, without the etcd server) and in full, and the
// baseline, when given, built both ways. The target applies to the node
// build. /bin/true is the floor of a process start here. The CPU time a
// call costs is reported beside its wall time: it grows much less with
// other work on the machine.
func (b *bench) cli() error {
	const prefix, node = "/cli", "cli-n00"
	calls := 50
	if b.quick {
		calls = 20
	}
	me, err := user.Current()
	if err != nil {
		return err
	}
	dir, err := b.configDir("cli", map[string]string{"motd.yaml": "files: [{path: /etc/motd, content: hi}]\n"})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "actions"), 0o755); err != nil {
		return err
	}
	handler := fmt.Sprintf("command: [/bin/true]\nrun_as: {user: %s}\n", me.Username)
	if err := os.WriteFile(filepath.Join(dir, "actions", "true.yaml"), []byte(handler), 0o644); err != nil {
		return err
	}
	a, err := b.startAgent(node, prefix, dir, 0, time.Minute)
	if err != nil {
		return err
	}
	defer a.stop()
	c := cluster.New(a.cli, cluster.Options{Prefix: prefix})
	if err := waitFor(time.Minute, 10*time.Millisecond, func() bool {
		v, err := c.View(b.ctx)
		return err == nil && aliveIn(v, node)
	}); err != nil {
		return fmt.Errorf("agent alive: %w", err)
	}

	builds := []cliBuild{{name: "node build", bin: b.ccm}}
	if b.baseline != "" {
		base, _, err := buildAt(b.work, b.baselineRev, agentTags)
		if err != nil {
			return fmt.Errorf("-baseline %s, node build: %w", b.baselineRev, err)
		}
		builds = append(builds, cliBuild{name: "before (" + b.baselineRev + ", node build)", bin: base})
	}
	builds = append(builds, cliBuild{name: "full build", bin: b.ccmFull})
	if b.baseline != "" {
		builds = append(builds, cliBuild{name: "before (" + b.baselineRev + ", full)", bin: b.baseline})
	}
	etcd := []string{"--endpoints", b.etcdURL, "--prefix", prefix}
	commands := []cliCommand{
		{name: "ccm action run", args: append([]string{"action", "run", "true", "--node", node}, etcd...)},
		{name: "ccm status", args: append([]string{"status"}, etcd...)},
		{name: "ccm version", args: []string{"version"}},
	}
	floor := &cliTimes{}
	for round := -3; round < calls; round++ { // three rounds of warm-up
		for i := range builds {
			bl := &builds[i]
			for _, cmd := range commands {
				t, err := runCLI(bl.bin, cmd.args, nil)
				if err != nil {
					return fmt.Errorf("%s (%s): %w", cmd.name, bl.name, err)
				}
				if round >= 0 {
					bl.times(cmd.name).add(t)
				}
			}
		}
		t, err := runCLI("/bin/true", nil, nil)
		if err != nil {
			return err
		}
		if round >= 0 {
			floor.add(t)
		}
	}
	for i := range builds {
		if builds[i].init, builds[i].heaviest, err = initCost(builds[i].bin); err != nil {
			return fmt.Errorf("init (%s): %w", builds[i].name, err)
		}
	}
	b.addCLI(builds, floor, calls)
	return nil
}

// addCLI records the cli scenario's figures: the node build's, with the
// other builds' in the note.
func (b *bench) addCLI(builds []cliBuild, floor *cliTimes, calls int) {
	node := builds[0]
	others := func(command string, p50 func(*cliTimes) float64) string {
		var s []string
		for _, bl := range builds[1:] {
			s = append(s, fmt.Sprintf("%s %.1f", bl.name, p50(bl.times(command))))
		}
		return strings.Join(s, ", ")
	}
	for _, cmd := range []struct {
		name, what string
		max        float64
		target     string
	}{
		{"ccm action run", "one node, its handler /bin/true", 25, "<= 25 ms"},
		{"ccm status", "one range read of the cluster's state", 0, ""},
		{"ccm version", "process start and package initialisation, no etcd", 0, ""},
	} {
		t := node.times(cmd.name)
		b.add("cli", cmd.name+" p50 (node build)", t.wallP50(), "ms", cmd.max, cmd.target,
			fmt.Sprintf("%d calls, each a new process (%s); p90 %.1f ms; CPU %.1f ms a call; p50 of %s ms; CPU of %s ms",
				calls, cmd.what, t.wallP90(), t.cpuP50(), others(cmd.name, (*cliTimes).wallP50), others(cmd.name, (*cliTimes).cpuP50)))
	}
	var inits []string
	for _, bl := range builds[1:] {
		inits = append(inits, fmt.Sprintf("%s %.1f ms (heaviest: %s)", bl.name, bl.init, bl.heaviest))
	}
	b.add("cli", "package initialisation (node build)", node.init, "ms", 0, "",
		fmt.Sprintf("the sum of GODEBUG=inittrace=1's clock for ccm version; heaviest: %s; %s; /bin/true p50 %.1f ms here",
			node.heaviest, strings.Join(inits, ", "), floor.wallP50()))
}

// cliBuild is one ccm binary and its figures, by command.
type cliBuild struct {
	name, bin string
	byCmd     map[string]*cliTimes
	// init is its package initialisation (ms), heaviest the packages
	// that take most of it.
	init     float64
	heaviest string
}

func (bl *cliBuild) times(command string) *cliTimes {
	if bl.byCmd == nil {
		bl.byCmd = map[string]*cliTimes{}
	}
	if bl.byCmd[command] == nil {
		bl.byCmd[command] = &cliTimes{}
	}
	return bl.byCmd[command]
}

type cliCommand struct {
	name string
	args []string
}

// cliTimes are the wall and CPU times of one command's calls.
type cliTimes struct{ wall, cpu []time.Duration }

type cliTime struct{ wall, cpu time.Duration }

func (t *cliTimes) add(c cliTime) {
	t.wall, t.cpu = append(t.wall, c.wall), append(t.cpu, c.cpu)
}

func (t *cliTimes) wallP50() float64 { return ms(percentile(sortDurations(t.wall), 50)) }
func (t *cliTimes) wallP90() float64 { return ms(percentile(sortDurations(t.wall), 90)) }
func (t *cliTimes) cpuP50() float64  { return ms(percentile(sortDurations(t.cpu), 50)) }

// runCLI runs bin with args as a shell would, with no CCM_* setting but
// those of env (and no defaults file), and returns the time from the
// start to the exit and the CPU time the process used. A non-zero exit
// is an error carrying its stderr.
func runCLI(bin string, args, env []string) (cliTime, error) {
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CCM_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, "CCM_DEFAULTS_FILE="), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return cliTime{}, fmt.Errorf("%v: %s", err, stderr.Bytes())
	}
	wall := time.Since(start)
	var cpu time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return cliTime{wall: wall, cpu: cpu}, nil
}

// initCost is the median over a few runs of ccm version of the package
// initialisation GODEBUG=inittrace=1 reports (the sum of its clock), and
// the three packages that take most of it.
func initCost(bin string) (float64, string, error) {
	var sums []time.Duration
	byPkg := map[string]float64{}
	const runs = 9
	for range runs {
		cmd := exec.Command(bin, "version")
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return 0, "", fmt.Errorf("%v: %s", err, stderr.Bytes())
		}
		var sum float64
		for _, line := range strings.Split(stderr.String(), "\n") {
			// init <package> @<start> ms, <clock> ms clock, <n> bytes, <n> allocs
			f := strings.Fields(line)
			if len(f) < 7 || f[0] != "init" || f[6] != "clock," {
				continue
			}
			clock, err := strconv.ParseFloat(f[4], 64)
			if err != nil {
				continue
			}
			sum += clock
			byPkg[f[1]] += clock / runs
		}
		sums = append(sums, time.Duration(sum*float64(time.Millisecond)))
	}
	pkgs := make([]string, 0, len(byPkg))
	for p := range byPkg {
		pkgs = append(pkgs, p)
	}
	sort.Slice(pkgs, func(i, j int) bool { return byPkg[pkgs[i]] > byPkg[pkgs[j]] })
	var top []string
	for _, p := range pkgs[:min(3, len(pkgs))] {
		top = append(top, fmt.Sprintf("%s %.2f", p, byPkg[p]))
	}
	return ms(percentile(sortDurations(sums), 50)), strings.Join(top, ", "), nil
}
