package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
)

// hostingRounds is how many times each build converges each import.
const hostingRounds = 3

// hostingAccounts are the account files a node's root starts with: the
// example creates its customers with useradd --prefix <root>.
var hostingAccounts = map[string]string{
	"passwd":  "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	"group":   "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
	"shadow":  "root:*:1::::::\nwww-data:*:1::::::\nnobody:*:1::::::\n",
	"gshadow": "root:*::\nwww-data:*::\nnogroup:*::\n",
	"shells":  "/bin/sh\n/bin/bash\n",
}

// hosting: the example stack converging an import of n new customers
// (a user and a site each) on one node with ccm apply --once: real
// useradd under --root, the real nginx -t and php-fpm -t checks through
// the example's helpers. This build runs the example of its tree; with
// -baseline, that revision's ccm runs that revision's example, in the same
// run, one after the other.
func (b *bench) hosting() error {
	for _, tool := range []string{"nginx", "useradd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				b.add("hosting", "skipped", 0, "", 0, "", tool+" is not installed")
				return nil
			}
		}
	}
	type agent struct{ name, bin, example string }
	agents := []agent{{"this build", b.ccm, "examples/ccm"}}
	if b.baseline != "" {
		example, err := b.exampleAt(b.baselineRev)
		if err != nil {
			return err
		}
		agents = append(agents, agent{"before (" + b.baselineRev + ")", b.baseline, example})
	}
	sizes := []int{50, 200}
	if b.quick {
		sizes = []int{50}
	}
	for _, n := range sizes {
		for i, ag := range agents {
			d, err := b.hostingFleet(fmt.Sprintf("/hosting-fleet-%d-%d", n, i), ag.bin, ag.example, n)
			if err != nil {
				return fmt.Errorf("%s, 3 agents, %d sites: %w", ag.name, n, err)
			}
			b.add("hosting", fmt.Sprintf("%d new sites, 3 agents, put to all converged (%s)", n, ag.name), d.Seconds(), "s", 0, "",
				"serial rollout, --debounce 1s, agent processes")
		}
		if n == 50 {
			if err := b.hostingOneSite(fmt.Sprintf("/hosting-one-%d", n), n); err != nil {
				return fmt.Errorf("one new site: %w", err)
			}
		}
		// The builds take turns, hostingRounds times: a shared machine's
		// load moves between rounds, not between the two of one round.
		runs := make([][]time.Duration, len(agents))
		for round := range hostingRounds {
			for i, ag := range agents {
				d, err := b.hostingRun(fmt.Sprintf("/hosting-%d-%d-%d", n, i, round), ag.bin, ag.example, n)
				if err != nil {
					return fmt.Errorf("%s, %d sites: %w", ag.name, n, err)
				}
				runs[i] = append(runs[i], d)
			}
		}
		var took []time.Duration
		for i, ag := range agents {
			sorted := sortDurations(runs[i])
			took = append(took, percentile(sorted, 50))
			b.add("hosting", fmt.Sprintf("%d new sites, one node, apply --once (%s)", n, ag.name), took[i].Seconds(), "s", 0, "",
				fmt.Sprintf("median of %d (%.2f to %.2f s); real useradd, nginx -t, php-fpm -t", len(sorted), sorted[0].Seconds(), sorted[len(sorted)-1].Seconds()))
		}
		if len(took) < 2 || took[0] <= 0 {
			continue
		}
		metric, speedup := fmt.Sprintf("%d new sites: speed-up over %s", n, b.baselineRev), took[1].Seconds()/took[0].Seconds()
		if n == 50 {
			b.addAtLeast("hosting", metric, speedup, "x", 5, ">= 5", "the issue's target")
		} else {
			b.add("hosting", metric, speedup, "x", 0, "", "")
		}
	}
	return nil
}

// exampleAt extracts the example configuration directory as it was at
// rev, for the baseline: its helpers and YAML are that revision's.
func (b *bench) exampleAt(rev string) (string, error) {
	dir := filepath.Join(b.work, "example-"+rev)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("git", "archive", rev, "examples/ccm")
	untar := exec.Command("tar", "-x", "-C", dir)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", err
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		return "", err
	}
	if err := archive.Run(); err != nil {
		return "", fmt.Errorf("git archive %s: %w", rev, err)
	}
	if err := untar.Wait(); err != nil {
		return "", err
	}
	return filepath.Join(dir, "examples/ccm"), nil
}

// hostingRun puts n customers under prefix and times one ccm apply --once
// of bin on the example at configDir, on a fresh root.
func (b *bench) hostingRun(prefix, bin, configDir string, n int) (time.Duration, error) {
	if _, err := b.putCustomers(prefix, n); err != nil {
		return 0, err
	}
	root, state, err := b.hostingRoot(strings.TrimPrefix(prefix, "/"))
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(bin, "--endpoints", b.etcdURL, "--prefix", prefix, "--node", "web1", "--root", root, "--state-dir", state,
		"--config-dir", configDir, "--log-level", "error", "apply", "--once", "--yes")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("apply --once: %v: %s", err, out)
	}
	if got := countVhosts(root); got != n {
		return 0, fmt.Errorf("apply --once wrote %d vhosts of %d: %s", got, n, out)
	}
	return took, nil
}

// putCustomers puts n customers (a user and a site each) under prefix and
// returns the revision of the last write.
func (b *bench) putCustomers(prefix string, n int) (int64, error) {
	cli, err := b.client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	var ops []clientv3.Op
	var rev int64
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		resp, err := cli.Txn(b.ctx).Then(ops...).Commit()
		if err == nil {
			rev = resp.Header.Revision
		}
		ops = ops[:0]
		return err
	}
	for i := range n {
		user := fmt.Sprintf("c%04d", i)
		ops = append(ops,
			clientv3.OpPut(prefix+"/objects/users/"+user, fmt.Sprintf(`{"uid":%d}`, 3000+i)),
			clientv3.OpPut(fmt.Sprintf("%s/objects/sites/site%04d", prefix, i), fmt.Sprintf(`{"user":%q,"domains":["site%04d.example.com"]}`, user, i)))
		if len(ops) >= 100 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	return rev, flush()
}

// hostingRoot makes a fresh root with the base account files, and a state
// directory, under name.
func (b *bench) hostingRoot(name string) (root, state string, err error) {
	base := filepath.Join(b.work, name)
	root, state = filepath.Join(base, "root"), filepath.Join(base, "state")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", "", err
	}
	for f, text := range hostingAccounts {
		if err := os.WriteFile(filepath.Join(root, "etc", f), []byte(text), 0o600); err != nil {
			return "", "", err
		}
	}
	return root, state, nil
}

func countVhosts(root string) int {
	vhosts, _ := filepath.Glob(filepath.Join(root, "etc/nginx/sites-enabled/*.conf"))
	return len(vhosts)
}

// hostingFleet starts three agent processes of bin (a serial rollout,
// --debounce 1s) on the example at configDir, waits until each reported
// its first run, then puts n customers and times from the last put until
// every node reports a converged run of it.
func (b *bench) hostingFleet(prefix, bin, configDir string, n int) (time.Duration, error) {
	cli, err := b.client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	c := cluster.New(cli, cluster.Options{Prefix: prefix})
	var nodes []string
	for i := range 3 {
		node := fmt.Sprintf("web%d", i+1)
		root, state, err := b.hostingRoot(strings.TrimPrefix(prefix, "/") + "/" + node)
		if err != nil {
			return 0, err
		}
		cmd := exec.Command(bin, "agent", "--debounce", "1s")
		cmd.Env = append(os.Environ(), "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX="+prefix, "CCM_CONFIG_DIR="+configDir,
			"CCM_ROOT="+root, "CCM_STATE_DIR="+state, "CCM_NODE="+node, "CCM_LOG_LEVEL=error")
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}()
		nodes = append(nodes, node)
	}
	reported := func(rev int64) func() bool {
		return func() bool {
			for _, node := range nodes {
				s, err := c.Status(b.ctx, node)
				if err != nil || s == nil || s.Result != api.ResultConverged || s.Revision < rev {
					return false
				}
			}
			return true
		}
	}
	if err := waitFor(2*time.Minute, 20*time.Millisecond, reported(0)); err != nil {
		return 0, fmt.Errorf("agents' first runs: %w", err)
	}
	rev, err := b.putCustomers(prefix, n)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := waitFor(10*time.Minute, 20*time.Millisecond, reported(rev)); err != nil {
		return 0, fmt.Errorf("all converged: %w", err)
	}
	return time.Since(start), nil
}

// hostingOneSite converges n customers on one agent process of this build
// (--debounce 0s), then adds one customer at a time, five times, and
// compares the time from the put to the node's converged status with the
// floor: that customer's own checks run directly (the example's helpers on
// its vhost and pool, and crontab's) plus one etcd put.
func (b *bench) hostingOneSite(prefix string, n int) error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := b.putCustomers(prefix, n); err != nil {
		return err
	}
	root, state, err := b.hostingRoot(strings.TrimPrefix(prefix, "/"))
	if err != nil {
		return err
	}
	example, err := filepath.Abs("examples/ccm")
	if err != nil {
		return err
	}
	cmd := exec.Command(b.ccm, "agent", "--debounce", "0s")
	cmd.Env = append(os.Environ(), "CCM_ENDPOINTS="+b.etcdURL, "CCM_PREFIX="+prefix, "CCM_CONFIG_DIR="+example,
		"CCM_ROOT="+root, "CCM_STATE_DIR="+state, "CCM_NODE=web1", "CCM_LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	c := cluster.New(cli, cluster.Options{Prefix: prefix})
	converged := func(rev int64) func() bool {
		return func() bool {
			s, err := c.Status(b.ctx, "web1")
			return err == nil && s != nil && s.Result == api.ResultConverged && s.Revision >= rev
		}
	}
	if err := waitFor(5*time.Minute, 20*time.Millisecond, func() bool { return countVhosts(root) == n && converged(0)() }); err != nil {
		return fmt.Errorf("initial converge: %w", err)
	}
	scratch, _, err := b.hostingRoot(strings.TrimPrefix(prefix, "/") + "-floor")
	if err != nil {
		return err
	}
	if out, err := exec.Command("groupadd", "--prefix", scratch, "-g", "2000", "customers").CombinedOutput(); err != nil {
		return fmt.Errorf("groupadd: %v: %s", err, out)
	}
	var took, floor []time.Duration
	for i := n; i < n+5; i++ {
		user := fmt.Sprintf("c%04d", i)
		start := time.Now()
		resp, err := cli.Txn(b.ctx).Then(
			clientv3.OpPut(prefix+"/objects/users/"+user, fmt.Sprintf(`{"uid":%d}`, 3000+i)),
			clientv3.OpPut(fmt.Sprintf("%s/objects/sites/site%04d", prefix, i), fmt.Sprintf(`{"user":%q,"domains":["site%04d.example.com"]}`, user, i))).Commit()
		if err != nil {
			return err
		}
		put := time.Since(start)
		if err := waitFor(time.Minute, time.Millisecond, converged(resp.Header.Revision)); err != nil {
			return fmt.Errorf("site %d: %w", i, err)
		}
		took = append(took, time.Since(start))
		tools, err := siteTools(example, root, scratch, i)
		if err != nil {
			return err
		}
		trips, err := b.runTrips(cli, prefix)
		if err != nil {
			return err
		}
		floor = append(floor, put+tools+trips)
	}
	t, f := percentile(sortDurations(took), 50), percentile(sortDurations(floor), 50)
	b.add("hosting", fmt.Sprintf("one new site after %d, put to converged", n), ms(t), "ms", 0, "", fmt.Sprintf("median of %d; --debounce 0s", len(took)))
	b.add("hosting", "one new site: its tools plus its etcd round trips", ms(f), "ms", 0, "",
		"the example's checks on its files and its useradd, run directly; the put, and a run's three requests (the lock's join, the confirm read, the status with the release)")
	b.add("hosting", "one new site: over its floor", t.Seconds()/f.Seconds(), "x", 1.2, "<= 1.2", "")
	return nil
}

// runTrips times the etcd requests of one run on its own: two writes and
// a read, one after the other (docs/PERFORMANCE.md, the event path).
func (b *bench) runTrips(cli *clientv3.Client, prefix string) (time.Duration, error) {
	start := time.Now()
	for _, op := range []clientv3.Op{
		clientv3.OpPut(prefix+"/bench/trip", "join"),
		clientv3.OpGet(prefix+"/objects/", clientv3.WithPrefix(), clientv3.WithCountOnly()),
		clientv3.OpPut(prefix+"/bench/trip", "finish"),
	} {
		if _, err := cli.Do(b.ctx, op); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// siteTools runs the tools a new customer i costs a run, directly: the
// example's checks of its files (CCM_ROOT set, as a run sets it), and
// its useradd, on the scratch copy of the accounts. It returns how long
// they took.
func siteTools(example, root, scratch string, i int) (time.Duration, error) {
	start := time.Now()
	user := fmt.Sprintf("c%04d", i)
	add := exec.Command("useradd", "--prefix", scratch, "-M", "-d", "/home/"+user, "-u", fmt.Sprint(3000+i), "-U", "-G", "customers", "-s", "/bin/bash", user)
	if out, err := add.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("useradd: %v: %s", err, out)
	}
	if _, err := siteChecks(example, root, i); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// siteChecks runs the example's checks of site i's files directly, as a
// run would (CCM_ROOT set), and returns how long they took.
func siteChecks(example, root string, i int) (time.Duration, error) {
	vhost := filepath.Join(root, fmt.Sprintf("etc/nginx/sites-enabled/site%04d.conf", i))
	pool := filepath.Join(root, fmt.Sprintf("etc/php/8.2/fpm/pool.d/site%04d.conf", i))
	cron := filepath.Join(root, fmt.Sprintf("etc/cron.d/ccm-c%04d", i))
	start := time.Now()
	for _, argv := range [][]string{
		{filepath.Join(example, "check/nginx-vhost"), vhost},
		{filepath.Join(example, "check/php-fpm-pool"), pool},
		{"grep", "-q", "^# managed by ccm", cron},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "CCM_ROOT="+root)
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("%v: %v: %s", argv, err, out)
		}
	}
	return time.Since(start), nil
}
