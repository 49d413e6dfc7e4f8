package main

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func (r *runningAgent) runs() int {
	n := 0
	for _, res := range []string{"converged", "failed", "aborted", "halted"} {
		n += int(testutil.ToFloat64(r.ag.Metrics().Runs.WithLabelValues(res)))
	}
	return n
}

// debounce: 1,000 writes over 5 s with --debounce 1s give one run; writes
// that never pause for the quiet period still give a run within --max-wait.
func (b *bench) debounce() error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	dir, err := b.configDir("debounce", map[string]string{"motd.yaml": `subscribes: [motd]
files:
  - path: /etc/motd/{{ .Object.ID }}
    for_each: motd
    content: "{{ .Object.Data.n }}\n"
`})
	if err != nil {
		return err
	}

	// 1,000 writes over 5 s, quiet period 1 s.
	a, err := b.startAgent("debounce", "/db", dir, time.Second, time.Minute)
	if err != nil {
		return err
	}
	if err := waitFor(time.Minute, 10*time.Millisecond, func() bool { return a.runs() >= 1 }); err != nil {
		a.stop()
		return fmt.Errorf("start-up converge: %w", err)
	}
	before := a.runs()
	tick := time.NewTicker(5 * time.Millisecond)
	for i := 0; i < 1000; i++ {
		<-tick.C
		if _, err := cli.Put(b.ctx, fmt.Sprintf("/db/objects/motd/m%d", i%50), fmt.Sprintf(`{"n":%d}`, i)); err != nil {
			tick.Stop()
			a.stop()
			return err
		}
	}
	tick.Stop()
	if err := waitFor(time.Minute, 10*time.Millisecond, func() bool { return a.runs() > before }); err != nil {
		a.stop()
		return err
	}
	time.Sleep(2 * time.Second) // a second run, if any, would come within one more quiet period
	runs := a.runs() - before
	a.stop()
	b.add("debounce", "runs for 1,000 writes in 5 s (debounce 1s)", float64(runs), "runs", 1, "exactly 1", "")

	// Writes every 100 ms for 8 s: never quiet for 1 s; max-wait 3 s.
	a, err = b.startAgent("churn", "/churn", dir, time.Second, 3*time.Second)
	if err != nil {
		return err
	}
	defer a.stop()
	if err := waitFor(time.Minute, 10*time.Millisecond, func() bool { return a.runs() >= 1 }); err != nil {
		return fmt.Errorf("start-up converge: %w", err)
	}
	before = a.runs()
	start := time.Now()
	var first time.Duration
	for i := 0; time.Since(start) < 8*time.Second; i++ {
		if _, err := cli.Put(b.ctx, "/churn/objects/motd/m", fmt.Sprintf(`{"n":%d}`, i)); err != nil {
			return err
		}
		if first == 0 && a.runs() > before {
			first = time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if first == 0 {
		return fmt.Errorf("no run during 8 s of churn with max-wait 3s")
	}
	b.add("debounce", "first run under constant churn (max-wait 3s)", first.Seconds(), "s", 3.5, "<= max-wait", "writes every 100 ms, debounce 1s")
	return nil
}
