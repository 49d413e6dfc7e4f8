package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
)

// actions: node actions with a handler that exits at once (/bin/true):
// the round trip of one call to one node, a fan-out to every agent, and
// 1,000 calls to one node with concurrency 8. The floor is one etcd put,
// measured in the same run.
func (b *bench) actions() error {
	const prefix = "/act"
	fanout := b.nodes[len(b.nodes)-1]
	me, err := user.Current()
	if err != nil {
		return err
	}
	dir, err := b.configDir("actions", map[string]string{"motd.yaml": "files: [{path: /etc/motd, content: hi}]\n"})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "actions"), 0o755); err != nil {
		return err
	}
	handler := fmt.Sprintf("command: [/bin/true]\nrun_as: {user: %s}\nconcurrency: 8\n", me.Username)
	if err := os.WriteFile(filepath.Join(dir, "actions", "true.yaml"), []byte(handler), 0o644); err != nil {
		return err
	}
	var agents []*runningAgent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i := 0; i < fanout; i++ {
		a, err := b.startAgent(fmt.Sprintf("act-n%02d", i), prefix, dir, 0, time.Minute)
		if err != nil {
			return err
		}
		agents = append(agents, a)
	}
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	c := cluster.New(cli, cluster.Options{Prefix: prefix})
	if err := waitFor(2*time.Minute, 10*time.Millisecond, func() bool {
		alive, err := c.Alive(b.ctx)
		return err == nil && len(alive) == fanout
	}); err != nil {
		return fmt.Errorf("agents alive: %w", err)
	}
	cl := client.New(cli, client.Options{Prefix: prefix})
	call := func(call client.Call) (time.Duration, error) {
		start := time.Now()
		for r, err := range cl.Run(b.ctx, call) {
			if err != nil {
				return 0, err
			}
			if r.State != api.StateSucceeded {
				return 0, fmt.Errorf("%s: %s: %s", r.Node, r.State, r.Error)
			}
		}
		return time.Since(start), nil
	}
	one := client.Call{Action: "true", To: client.Targets{Nodes: []string{"act-n00"}}}
	for range 20 { // warm-up
		if _, err := call(one); err != nil {
			return err
		}
	}
	put := func() (time.Duration, error) {
		start := time.Now()
		_, err := cli.Put(b.ctx, prefix+"/floor", "x")
		return time.Since(start), err
	}
	var rtt, floor []time.Duration
	for range 200 {
		d, err := call(one)
		if err != nil {
			return err
		}
		f, err := put()
		if err != nil {
			return err
		}
		rtt, floor = append(rtt, d), append(floor, f)
	}
	s, f := sortDurations(rtt), sortDurations(floor)
	putNote := fmt.Sprintf("etcd put p50 %.2f ms", ms(percentile(f, 50)))
	b.add("actions", "call round trip to one node p50", ms(percentile(s, 50)), "ms", 10, "<= 10 ms",
		fmt.Sprintf("%.1fx one etcd put; %s", ms(percentile(s, 50))/ms(percentile(f, 50)), putNote))
	b.add("actions", "call round trip to one node p90", ms(percentile(s, 90)), "ms", 0, "", "")
	switch results, err := b.rabbitRPC(200); {
	case errors.Is(err, errSkipped):
		fmt.Fprintf(os.Stderr, "   actions: no RabbitMQ figure: %v\n", err)
	case err != nil:
		return fmt.Errorf("RabbitMQ RPC: %w", err)
	default:
		for _, r := range results {
			note := fmt.Sprintf("the same call in this run over RabbitMQ RPC, %s (bench/rabbitmq_rpc.py); ccm p50 is %.2fx it", r.mode, ms(percentile(s, 50))/r.p50)
			b.add("actions", "RabbitMQ RPC "+r.mode+" round trip p50 (peer)", r.p50, "ms", 0, "", note)
			b.add("actions", "RabbitMQ RPC "+r.mode+" round trip p90 (peer)", r.p90, "ms", 0, "", "")
		}
	}

	var fan []time.Duration
	for range 20 {
		d, err := call(client.Call{Action: "true", To: client.Targets{All: true}})
		if err != nil {
			return err
		}
		fan = append(fan, d)
	}
	spawn, err := spawnFloor(fanout)
	if err != nil {
		return err
	}
	b.add("actions", fmt.Sprintf("fan-out to %d agents, last reply p50", fanout), ms(percentile(sortDurations(fan), 50)), "ms", 150, "<= 150 ms",
		fmt.Sprintf("all %d agents share %d cores: %d concurrent /bin/true alone take %.0f ms here; %s", fanout, b.report.CPUs, fanout, ms(spawn), putNote))

	const calls, callers = 1000, 32
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	next := make(chan struct{}, calls)
	for range calls {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if _, err := call(one); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	select {
	case err := <-errs:
		return err
	default:
	}
	b.addAtLeast("actions", "1,000 calls to one node, concurrency 8", float64(calls)/took.Seconds(), "calls/s", 200, ">= 200 calls/s",
		fmt.Sprintf("%d callers at once; %s", callers, putNote))
	return b.flood(prefix, dir, cli, call)
}

// flood: 10,000 requests from one caller wait for a node that is down
// (an unknown action: each is rejected); the node starts, and a call is
// timed from the moment it is alive to its reply.
func (b *bench) flood(prefix, dir string, cli *clientv3.Client, call func(client.Call) (time.Duration, error)) error {
	const queued, node = 10000, "act-flood"
	keys := api.NewKeys(prefix)
	for batch := range queued / 100 {
		var ops []clientv3.Op
		for i := range 100 {
			id := fmt.Sprintf("%s-%03d%02d", api.NewID(time.Now()), batch, i)
			raw, _ := json.Marshal(api.Request{ID: id, Action: "nope", By: "flooder", Created: time.Now()})
			ops = append(ops, clientv3.OpPut(keys.ActionKey(node, id), string(raw)))
		}
		if _, err := cli.Txn(b.ctx).Then(ops...).Commit(); err != nil {
			return err
		}
	}
	a, err := b.startAgent(node, prefix, dir, 0, time.Minute)
	if err != nil {
		return err
	}
	defer a.stop()
	c := cluster.New(cli, cluster.Options{Prefix: prefix})
	if err := waitFor(time.Minute, time.Millisecond, func() bool { v, err := c.View(b.ctx); return err == nil && aliveIn(v, node) }); err != nil {
		return err
	}
	d, err := call(client.Call{Action: "true", To: client.Targets{Nodes: []string{node}}, Timing: client.Timing{PickupTimeout: 5 * time.Minute}})
	if err != nil {
		return err
	}
	b.add("actions", "a call to a node returning to 10,000 queued requests", ms(d), "ms", 10000, "<= 10 s (the default pickup timeout)",
		fmt.Sprintf("from the node's presence to the reply; the requests are claimed (here rejected) %d at a time, in an order fair across callers", 16))
	return nil
}

func aliveIn(v *cluster.View, node string) bool {
	for _, n := range v.Nodes {
		if n.Name == node && n.Presence != nil {
			return true
		}
	}
	return false
}

// spawnFloor is the median time n concurrent runs of /bin/true take on
// this machine: what a fan-out to n agents on one machine cannot beat.
func spawnFloor(n int) (time.Duration, error) {
	var runs []time.Duration
	for range 10 {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		start := time.Now()
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := exec.Command("/bin/true").Run(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		runs = append(runs, time.Since(start))
		select {
		case err := <-errs:
			return 0, err
		default:
		}
	}
	return percentile(sortDurations(runs), 50), nil
}
