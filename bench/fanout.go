package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// fanoutRepeats is how many calls of each kind the scale scenario's
// fan-out times (after one warm-up call).
var fanoutRepeats = flag.Int("fanout-repeats", 5, "calls of each kind the scale scenario's fan-out times")

// choriaPerNode is Choria's published figure, an RPC to 50,000 nodes in
// about 16 s, per node.
const choriaPerNode = 16.0 / 50000 * 1000 // ms

// fanoutHandler is the action the fan-out calls: exec'd, and it exits at
// once.
const fanoutHandler = "command: [/bin/true]\nrun_as: {user: root}\nconcurrency: 8\n"

// fanoutLabel is the label half the fleet carries (the even nodes).
var fanoutLabel = map[string]string{"half": "yes"}

// withFanoutHandler adds the fan-out's action to a configuration
// directory.
func withFanoutHandler(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "actions"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "actions", "true.yaml"), []byte(fanoutHandler), 0o644)
}

// fanout (in the scale scenario): calls through the Go client to every
// node of a fleet of n agent processes, and to the half that carries a
// label, one call at a time: the time from the call's start to its first
// and its last reply, and what etcd did for it (CPU, commits, watch
// events, requests).
func (b *bench) fanout(f *fleetRun) error {
	cli, etcd, prefix, names := f.cli, f.etcd, f.prefix, f.names
	n := len(names)
	keys := api.NewKeys(prefix)
	for i, name := range names {
		if i%2 == 0 {
			if _, err := cli.Put(b.ctx, keys.LabelsKey(name), `{"half":"yes"}`); err != nil {
				return err
			}
		}
	}
	c := cluster.New(cli, cluster.Options{Prefix: prefix})
	if err := waitFor(5*time.Minute, 100*time.Millisecond, func() bool {
		alive, err := c.Alive(b.ctx)
		return err == nil && len(alive) == n
	}); err != nil {
		return fmt.Errorf("%d agents alive: %w", n, err)
	}
	// A fresh fleet converges once, node after node: calls wait for it.
	if err := allConverged(b.ctx, cli, prefix, n, 1, *scaleTimeout); err != nil {
		return fmt.Errorf("the fleet's first run: %w", err)
	}
	cl := client.New(cli, client.Options{Prefix: prefix})
	kinds := []struct {
		what string
		to   client.Targets
		want int
	}{
		{fmt.Sprintf("%d agent processes: an action to every node", n), client.Targets{All: true}, n},
		{fmt.Sprintf("%d agent processes: an action by label (%d nodes)", n, (n+1)/2), client.Targets{Labels: fanoutLabel}, (n + 1) / 2},
	}
	for _, k := range kinds {
		call := client.Call{Action: "true", By: "bench", To: k.to, Timing: client.Timing{PickupTimeout: *scaleTimeout}}
		if _, err := fanoutCall(b.ctx, cl, call, k.want); err != nil { // warm-up
			return fmt.Errorf("%s: %w", k.what, err)
		}
		var first, last, cpu, agents []time.Duration
		var per etcdCounts
		for range *fanoutRepeats {
			before, err := etcd.counts()
			if err != nil {
				return err
			}
			cpu0, agents0 := etcd.cpu(), procsCPU(f.procs)
			t, err := fanoutCall(b.ctx, cl, call, k.want)
			if err != nil {
				return fmt.Errorf("%s: %w", k.what, err)
			}
			cpu, agents = append(cpu, etcd.cpu()-cpu0), append(agents, procsCPU(f.procs)-agents0)
			after, err := etcd.counts()
			if err != nil {
				return err
			}
			per = per.add(after.sub(before))
			first, last = append(first, t.first), append(last, t.last)
		}
		per = per.scale(1 / float64(*fanoutRepeats*k.want))
		l := ms(percentile(sortDurations(last), 50))
		b.add("scale", k.what+": first reply p50", ms(percentile(sortDurations(first), 50)), "ms", 0, "",
			fmt.Sprintf("%d calls, one at a time; handler /bin/true, exec'd", *fanoutRepeats))
		target, max := "", 0.0
		if n >= 500 && k.to.All {
			target, max = "<= 2 s", 2000
		}
		b.add("scale", k.what+": last reply p50", l, "ms", max, target,
			fmt.Sprintf("%.2f ms per node; Choria publishes an RPC to 50,000 nodes in ~16 s, %.2f ms per node", l/float64(k.want), choriaPerNode))
		b.add("scale", k.what+": etcd CPU per call p50", ms(percentile(sortDurations(cpu), 50)), "ms", 0, "",
			fmt.Sprintf("user+system of the 3 members; %.2f ms per node", ms(percentile(sortDurations(cpu), 50))/float64(k.want)))
		b.add("scale", k.what+": the agents' CPU per call p50", ms(percentile(sortDurations(agents), 50)), "ms", 0, "",
			fmt.Sprintf("user+system of the %d agent processes (not their handlers); %.2f ms per node", n, ms(percentile(sortDurations(agents), 50))/float64(k.want)))
		b.add("scale", k.what+": etcd work per node", per.commits, "commits", 0, "", per.String())
	}
	idle0, etcdIdle0, idleStart := procsCPU(f.procs), etcd.cpu(), time.Now()
	time.Sleep(3 * time.Second) // a quiet fleet: the cost of the calls' time beside their own
	idleSecs := time.Since(idleStart).Seconds()
	idleAgents, idleEtcd := float64(procsCPU(f.procs)-idle0)/idleSecs, float64(etcd.cpu()-etcdIdle0)/idleSecs
	b.add("scale", fmt.Sprintf("%d agent processes: CPU of the idle fleet", n), ms(time.Duration(idleAgents)), "ms/s", 0, "",
		fmt.Sprintf("the agents, over %.0f s without a call; etcd's 3 members %.0f ms/s", idleSecs, ms(time.Duration(idleEtcd))))
	return nil
}

// fanoutTimes is when a call's first and last replies arrived, from its
// start.
type fanoutTimes struct{ first, last time.Duration }

// fanoutCall makes one call and checks that want nodes succeeded.
func fanoutCall(ctx context.Context, cl *client.Client, call client.Call, want int) (fanoutTimes, error) {
	var t fanoutTimes
	start := time.Now()
	h, err := cl.Start(ctx, call)
	if err != nil {
		return t, err
	}
	got := 0
	for r := range h.Replies() {
		if r.Err != nil {
			return t, r.Err
		}
		if r.Reply.State != api.StateSucceeded {
			return t, fmt.Errorf("%s: %s: %s", r.Node, r.Reply.State, r.Reply.Error)
		}
		if got++; got == 1 {
			t.first = time.Since(start)
		}
	}
	t.last = time.Since(start)
	if err := h.Err(); err != nil {
		return t, err
	}
	if got != want {
		return t, fmt.Errorf("%d replies, want %d", got, want)
	}
	return t, nil
}

// etcdCounts is what etcd members did, from their metrics: raft commits
// (the most any member applied), and summed over the members the watch
// events sent, the watch requests received (creations and
// cancellations), and the Txn and Range calls served.
type etcdCounts struct {
	commits, events, watches, txns, ranges float64
}

func (c etcdCounts) sub(o etcdCounts) etcdCounts {
	return etcdCounts{c.commits - o.commits, c.events - o.events, c.watches - o.watches, c.txns - o.txns, c.ranges - o.ranges}
}

func (c etcdCounts) add(o etcdCounts) etcdCounts {
	return etcdCounts{c.commits + o.commits, c.events + o.events, c.watches + o.watches, c.txns + o.txns, c.ranges + o.ranges}
}

func (c etcdCounts) scale(f float64) etcdCounts {
	return etcdCounts{c.commits * f, c.events * f, c.watches * f, c.txns * f, c.ranges * f}
}

// String lists the counts, as the note of a result.
func (c etcdCounts) String() string {
	return fmt.Sprintf("%.2f commits, %.2f watch events sent, %.2f watch requests, %.2f Txn and %.2f Range calls",
		c.commits, c.events, c.watches, c.txns, c.ranges)
}

// counts reads the members' metrics.
func (m *members) counts() (etcdCounts, error) {
	var c etcdCounts
	for _, ep := range m.endpoints {
		mc, err := etcdtest.MemberCounts(ep)
		if err != nil {
			return c, err
		}
		if !mc.Reported["commits"] || !mc.Reported["events"] {
			return c, fmt.Errorf("%s/metrics: no commits or watch events", ep)
		}
		c.commits = max(c.commits, mc.Commits)
		c.events += mc.Events
		c.watches += mc.WatchRequests
		c.txns += mc.Txns
		c.ranges += mc.Ranges
	}
	return c, nil
}
