// Command bench measures ccm against a real etcd on loopback and writes
// bench/results.json: event-to-file latency, render and apply throughput,
// serial rollout, idle footprint and debounce behaviour. Every figure that
// has a floor is reported with the floor measured in the same run.
//
// Run it with make bench (about five minutes on two cores).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/embedded"
)

// Result is one measured figure.
type Result struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// Report is the whole run.
type Report struct {
	Time    time.Time `json:"time"`
	GoOS    string    `json:"goos"`
	CPUs    int       `json:"cpus"`
	Results []Result  `json:"results"`
}

// agentTags are the build tags of the binary a node runs (make build-agent,
// the Debian package).
const agentTags = "noembed"

type bench struct {
	ctx     context.Context
	work    string // scratch directory
	ccm     string // the ccm binary, built as for a node (agentTags)
	ccmFull string // the ccm binary with the etcd server
	etcdURL string
	report  Report
	idle    time.Duration
	// profiles, when set, is a directory for the agent's heap and CPU
	// profiles of the one-file scenario.
	profiles string
	confd    string // a confd binary to compare against, or ""
	// baseline is ccm built at baselineRev (-baseline), measured beside
	// this one where an agent runs as a process; "" without.
	baseline, baselineRev string
	scale                 []int
	nodes                 []int
	// quick is -quick; churn is how long the drift scenario's churn runs.
	quick bool
	churn time.Duration
}

func main() {
	out := flag.String("out", "bench/results.json", "where to write the results")
	idle := flag.Duration("idle", 60*time.Second, "idle period for the footprint")
	quick := flag.Bool("quick", false, "smaller sizes, for a smoke run")
	only := flag.String("only", "", "run only scenarios whose name contains this")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the in-process agents to this file")
	profiles := flag.String("profiles", "", "write the one-file agent's heap and CPU profiles into this `DIR`")
	confd := flag.String("confd", os.Getenv("CONFD"), "a confd binary to measure beside ccm in the one-file scenario (default $CONFD)")
	baseline := flag.String("baseline", "", "also measure ccm as built at this git `REV` (before and after in one run)")
	churn := flag.Duration("drift-churn", 10*time.Minute, "how long the drift scenario's editor-like writer fights 100 files (0: not at all)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(*out, *idle, *quick, *only, *profiles, *confd, *baseline, *churn); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(out string, idle time.Duration, quick bool, only, profiles, confd, baseline string, churn time.Duration) error {
	work, err := os.MkdirTemp("", "ccm-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b := &bench{ctx: context.Background(), work: work, idle: idle, profiles: profiles, confd: confd,
		scale: []int{1000, 10000, 100000}, nodes: []int{5, 20, 50},
		report: Report{Time: time.Now().UTC(), GoOS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU()}, quick: quick, churn: churn}
	if quick {
		b.scale, b.nodes, b.idle = []int{1000, 10000}, []int{5, 20}, 10*time.Second
	}
	if profiles != "" {
		if err := os.MkdirAll(profiles, 0o755); err != nil {
			return err
		}
	}
	b.ccm, b.ccmFull = filepath.Join(work, "ccm"), filepath.Join(work, "ccm-full")
	if out, err := exec.Command("go", "build", "-tags", agentTags, "-o", b.ccm, "./cmd/ccm").CombinedOutput(); err != nil {
		return fmt.Errorf("build ccm: %v: %s", err, out)
	}
	if out, err := exec.Command("go", "build", "-o", b.ccmFull, "./cmd/ccm").CombinedOutput(); err != nil {
		return fmt.Errorf("build ccm: %v: %s", err, out)
	}
	if baseline != "" {
		if b.baseline, b.baselineRev, err = buildAt(work, baseline); err != nil {
			return fmt.Errorf("-baseline %s: %w", baseline, err)
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	b.etcdURL = "http://" + addr
	srv, err := embedded.Start(b.ctx, embedded.Config{Dir: filepath.Join(work, "etcd"), ClientURL: b.etcdURL, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer srv.Close()

	scenarios := []struct {
		name string
		fn   func() error
	}{
		{"latency", b.latency},
		{"onefile", b.onefile},
		{"onefile-etcd34", b.onefileEtcd34},
		{"perfile", b.perfile},
		{"throughput", b.throughput},
		{"rollout", b.rollout},
		{"actions", b.actions},
		{"cli", b.cli},
		{"debounce", b.debounce},
		{"footprint", b.footprint},
		{"drift", b.drift},
		{"hosting", b.hosting},
		{"scale", b.fleet},
	}
	for _, s := range scenarios {
		if only != "" && !strings.Contains(s.name, only) {
			continue
		}
		start := time.Now()
		fmt.Fprintf(os.Stderr, "== %s\n", s.name)
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Fprintf(os.Stderr, "   %s done in %s\n", s.name, time.Since(start).Round(time.Second))
	}
	b.print()
	raw, err := json.MarshalIndent(b.report, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(raw, '\n'), 0o644)
}

// add records a result; target, when set, is checked as value <= max.
func (b *bench) add(scenario, metric string, value float64, unit string, max float64, target, note string) {
	r := Result{Scenario: scenario, Metric: metric, Value: round(value), Unit: unit, Target: target, Note: note}
	if target != "" {
		met := value <= max
		r.Met = &met
	}
	b.report.Results = append(b.report.Results, r)
}

// addAtLeast records a result whose target is value >= least.
func (b *bench) addAtLeast(scenario, metric string, value float64, unit string, least float64, target, note string) {
	b.add(scenario, metric, value, unit, 0, "", note)
	r := &b.report.Results[len(b.report.Results)-1]
	met := value >= least
	r.Target, r.Met = target, &met
}

func round(v float64) float64 {
	switch {
	case v >= 100:
		return float64(int64(v + 0.5))
	case v >= 1:
		return float64(int64(v*100+0.5)) / 100
	default:
		return float64(int64(v*10000+0.5)) / 10000
	}
}

func (b *bench) print() {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SCENARIO\tMETRIC\tVALUE\tUNIT\tTARGET\tMET\tNOTE")
	for _, r := range b.report.Results {
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*r.Met]
		}
		fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\t%s\t%s\n", r.Scenario, r.Metric, r.Value, r.Unit, r.Target, met, r.Note)
	}
	w.Flush()
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func sortDurations(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// buildAt builds ccm as it was at git revision rev (with the build tags
// given, if any), in a scratch work tree under work, and returns the
// binary and the short revision.
func buildAt(work, rev string, tags ...string) (bin, short string, err error) {
	out, err := exec.Command("git", "rev-parse", "--short", rev).Output()
	if err != nil {
		return "", "", err
	}
	short = strings.TrimSpace(string(out))
	tree := filepath.Join(work, "baseline-src")
	if out, err := exec.Command("git", "worktree", "add", "--detach", tree, rev).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%v: %s", err, out)
	}
	defer exec.Command("git", "worktree", "remove", "--force", tree).Run()
	bin = filepath.Join(work, strings.Join(append([]string{"ccm", short}, tags...), "-"))
	build := exec.Command("go", "build", "-tags", strings.Join(tags, ","), "-o", bin, "./cmd/ccm")
	build.Dir = tree
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build: %v: %s", err, out)
	}
	return bin, short, nil
}
