package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/objects"
)

// rollout: N agents (goroutines, each with its own root) and a trivial
// configuration; from one put to the last node converged. The floor is N
// lock acquire-and-release round trips, measured in the same run.
func (b *bench) rollout() error {
	totals := map[int]time.Duration{}
	var rt time.Duration
	for _, n := range b.nodes {
		total, floor, err := b.rolloutN(n)
		if err != nil {
			return err
		}
		totals[n], rt = total, floor
	}
	// The slope between the smallest and largest cluster is the cost each
	// extra node adds, without the fixed cost of the first handoff.
	lo, hi := b.nodes[0], b.nodes[len(b.nodes)-1]
	slope := (totals[hi] - totals[lo]) / time.Duration(hi-lo)
	b.add("rollout", fmt.Sprintf("marginal cost per node (%d to %d nodes)", lo, hi), ms(slope), "ms", 0, "",
		fmt.Sprintf("%.1fx the lock round trip (%.2f ms)", float64(slope)/float64(rt), ms(rt)))
	return b.rolloutBatch(hi, 5, 200*time.Millisecond)
}

// rolloutBatch: n agents converge in batches of batch, each with an
// on_change that takes onChange; from one put to the last node converged.
// The floor is n/batch on_change durations back to back.
func (b *bench) rolloutBatch(n, batch int, onChange time.Duration) error {
	prefix := fmt.Sprintf("/rb%d", n)
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	raw, err := json.Marshal(api.Rollout{Batch: batch})
	if err != nil {
		return err
	}
	if _, err := cli.Put(b.ctx, prefix+"/rollout", string(raw)); err != nil {
		return err
	}
	total, err := b.timeRollout(prefix, n, fmt.Sprintf("on_change: [[sleep, %q]]\n", fmt.Sprint(onChange.Seconds())))
	if err != nil {
		return err
	}
	floor := time.Duration(n/batch) * onChange
	b.add("rollout", fmt.Sprintf("batch %d over %d nodes, on_change %s: put to last converged", batch, n, onChange), total.Seconds(), "s",
		1.3*floor.Seconds(), fmt.Sprintf("<= 1.3 x %s", floor), fmt.Sprintf("%.2fx the floor of %d batches x %s", total.Seconds()/floor.Seconds(), n/batch, onChange))
	return nil
}

func (b *bench) rolloutN(n int) (time.Duration, time.Duration, error) {
	prefix := fmt.Sprintf("/ro%d", n)
	total, err := b.timeRollout(prefix, n, "")
	if err != nil {
		return 0, 0, err
	}
	rt, err := b.lockRoundTrip(prefix + "/floor")
	if err != nil {
		return 0, 0, err
	}
	perNode := total / time.Duration(n)
	b.add("rollout", fmt.Sprintf("%d nodes: put to last converged", n), ms(total), "ms", 0, "",
		fmt.Sprintf("median of %d rollouts; floor %d x %.2f ms lock round trip = %.0f ms", rolloutRounds, n, ms(rt), ms(rt)*float64(n)))
	b.add("rollout", fmt.Sprintf("%d nodes: per node / lock round trip", n), float64(perNode)/float64(rt), "x", 3, "<= 3x",
		fmt.Sprintf("%.2f ms per node", ms(perNode)))
	return total, rt, nil
}

// rolloutRounds is how many rollouts a figure is the median of.
const rolloutRounds = 5

// timeRollout starts n agents under prefix with a trivial configuration
// (plus extra YAML), and returns the median time from one put to the last
// node converged.
func (b *bench) timeRollout(prefix string, n int, extra string) (time.Duration, error) {
	dir, err := b.configDir(strings.TrimPrefix(prefix, "/"), map[string]string{"motd.yaml": `subscribes: [motd]
files:
  - path: /etc/motd
    content: "{{ range .Objects.motd }}{{ .Data.text }}{{ end }}\n"
` + extra})
	if err != nil {
		return 0, err
	}
	cli, err := b.client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	var agents []*runningAgent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i := 0; i < n; i++ {
		a, err := b.startAgent(fmt.Sprintf("%s-n%02d", strings.TrimPrefix(prefix, "/"), i), prefix, dir, 0, time.Minute)
		if err != nil {
			return 0, err
		}
		agents = append(agents, a)
	}
	converged := func(text string) bool {
		for _, a := range agents {
			got, _ := os.ReadFile(filepath.Join(a.root, "etc/motd"))
			if string(got) != text+"\n" {
				return false
			}
		}
		return true
	}
	if _, err := cli.Put(b.ctx, objects.Key(prefix, "motd", "m"), `{"text":"warm-up"}`); err != nil {
		return 0, err
	}
	if err := waitFor(5*time.Minute, 5*time.Millisecond, func() bool { return converged("warm-up") }); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	var totals []time.Duration
	for r := 0; r < rolloutRounds; r++ {
		time.Sleep(500 * time.Millisecond) // let the last run release the lock
		text := fmt.Sprintf("rolled out %d", r)
		start := time.Now()
		if _, err := cli.Put(b.ctx, objects.Key(prefix, "motd", "m"), fmt.Sprintf(`{"text":%q}`, text)); err != nil {
			return 0, err
		}
		if err := waitFor(5*time.Minute, time.Millisecond, func() bool { return converged(text) }); err != nil {
			return 0, err
		}
		totals = append(totals, time.Since(start))
	}
	return percentile(sortDurations(totals), 50), nil
}

// lockRoundTrip measures one acquire and release of an uncontended etcd
// mutex on an open session.
func (b *bench) lockRoundTrip(pfx string) (time.Duration, error) {
	cli, err := b.client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	return lockRoundTripOn(cli, pfx)
}

// lockRoundTripOn is lockRoundTrip on the etcd of cli.
func lockRoundTripOn(cli *clientv3.Client, pfx string) (time.Duration, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		return 0, err
	}
	defer s.Close()
	m := concurrency.NewMutex(s, pfx)
	const rounds = 50
	start := time.Now()
	for i := 0; i < rounds; i++ {
		if err := m.Lock(context.Background()); err != nil {
			return 0, err
		}
		if err := m.Unlock(context.Background()); err != nil {
			return 0, err
		}
	}
	return time.Since(start) / rounds, nil
}
