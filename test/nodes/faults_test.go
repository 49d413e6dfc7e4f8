//go:build nodes

package nodes

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runShort runs a host command that should end within 10 s.
func runShort(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return run(ctx, name, args...)
}

func readShared(l *lab, name string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(l.shared, name))
	return string(raw), err
}

func writeShared(t *testing.T, l *lab, name, body string) {
	t.Helper()
	require(t, os.WriteFile(filepath.Join(l.shared, name), []byte(body), 0o644))
}

// cut takes a node's port on the bridge down: nothing in or out.
func (l *lab) cut(n *node) { l.must("ip", "-n", swNS, "link", "set", n.name, "down") }

// heal brings it back.
func (l *lab) heal(n *node) { l.must("ip", "-n", swNS, "link", "set", n.name, "up") }

// leader is the etcd member that leads.
func (l *lab) leader(t *testing.T) *member {
	t.Helper()
	out, err := l.etcdctl("endpoint", "status", "-w", "json")
	require(t, err)
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	require(t, json.Unmarshal([]byte(out), &st))
	for _, s := range st {
		if s.Status.Header.MemberID == s.Status.Leader {
			for _, m := range l.etcd {
				if strings.Contains(s.Endpoint, m.ip+":") {
					return m
				}
			}
		}
	}
	t.Fatalf("no leader in %s", out)
	return nil
}

// others are the nodes but n.
func (l *lab) others(n *node) []*node {
	var out []*node
	for _, m := range l.nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// convergedOn waits until the named nodes report rev converged and are
// not behind; the others are not asked.
func (l *lab) convergedOn(t *testing.T, rev int64, nodes []*node, timeout time.Duration) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range nodes {
		want[n.name] = true
	}
	eventually(t, timeout, func() bool {
		st, err := l.status()
		if err != nil {
			return false
		}
		raws, _ := st["nodes"].([]any)
		done := 0
		for _, raw := range raws {
			nv, _ := raw.(map[string]any)
			if name, _ := nv["name"].(string); want[name] {
				if c, _ := nv["converged_revision"].(float64); int64(c) >= rev {
					done++
				}
			}
		}
		return done == len(want)
	}, "%d nodes report revision %d converged", len(want), rev)
}

// alive reports whether the cluster sees node name's agent alive.
func (l *lab) alive(name string) bool {
	st, err := l.status()
	if err != nil {
		return true
	}
	raws, _ := st["nodes"].([]any)
	for _, raw := range raws {
		nv, _ := raw.(map[string]any)
		if nv["name"] == name {
			return nv["presence"] != nil
		}
	}
	return false
}

// fault is the state a fault starts from, for the checks after it.
type fault struct {
	start    time.Time
	restarts map[string]int
	runsLen  int
}

func (l *lab) begin(t *testing.T) *fault {
	f := &fault{start: time.Now(), restarts: map[string]int{}}
	for _, n := range l.nodes {
		f.restarts[n.name], _ = strconv.Atoi(n.show("NRestarts"))
	}
	raw, _ := readShared(l, "runs.log")
	f.runsLen = len(raw)
	return f
}

// after is the chaos tests' check after a fault: every agent is up or was
// restarted once by systemd, every node converges the next change and
// answers an action that runs once, and the logs are bounded.
func (l *lab) after(t *testing.T, f *fault, v string) {
	t.Helper()
	for _, n := range l.nodes {
		eventually(t, 2*time.Minute, func() bool { return n.show("ActiveState") == "active" && n.readyz() == "ok" }, "%s: the agent is up and ready", n.name)
		if r, _ := strconv.Atoi(n.show("NRestarts")); r > f.restarts[n.name]+1 {
			t.Errorf("%s: systemd restarted the agent %d times during the fault", n.name, r-f.restarts[n.name])
		}
	}
	rev := l.put(t, "a", v)
	l.converged(t, rev, "a", v, 3*time.Minute)
	out, err := l.cli("action", "run", "whoami", "--all", "--json")
	if err != nil {
		t.Errorf("whoami on every node after the fault: %v", err)
	}
	ids := map[string]int{}
	raw, _ := readShared(l, "actions.log")
	for _, line := range strings.Split(raw, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			ids[f[0]+" "+f[1]]++
		}
	}
	for id, c := range ids {
		if c > 1 {
			t.Errorf("action %s ran %d times", id, c)
		}
	}
	if c := strings.Count(out, `"succeeded"`); c != len(l.nodes) {
		t.Errorf("whoami succeeded on %d nodes of %d: %s", c, len(l.nodes), out)
	}
	minutes := int(time.Since(f.start)/time.Minute) + 1
	for _, n := range l.nodes {
		logs, _ := n.exec("journalctl", "-u", "ccm", "-o", "cat", "--no-pager", "--since", fmt.Sprintf("@%d", f.start.Unix()))
		lines := strings.Count(logs, "\n")
		t.Logf("%s: %d log lines in %d started minutes", n.name, lines, minutes)
		if lines > 40*minutes {
			t.Errorf("%s: %d log lines in %d started minutes, more than 40 a minute", n.name, lines, minutes)
		}
	}
}

// run is one on_change of the record hook, from its start to its last line.
type hookRun struct {
	node       string
	start, end float64
}

// hookRuns parses /shared/runs.log from offset.
func (l *lab) hookRuns(offset int) []hookRun {
	raw, _ := readShared(l, "runs.log")
	if offset > len(raw) {
		offset = len(raw)
	}
	var runs []hookRun
	open := map[string]int{}
	for _, line := range strings.Split(raw[offset:], "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		ts, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "start":
			runs = append(runs, hookRun{node: f[1], start: ts, end: ts})
			open[f[1]] = len(runs) - 1
		case "tick", "end":
			if i, ok := open[f[1]]; ok {
				runs[i].end = ts
			}
		}
	}
	return runs
}

func testNetworkFaults(t *testing.T, l *lab) {
	// The lock holder is cut off while its on_change holds (12 s, more
	// than two 5 s leases): the next node starts only after the holder's
	// hook stopped; no two nodes' hooks ever overlap.
	t.Run("HolderCutOffMidRun", func(t *testing.T) {
		f := l.begin(t)
		writeShared(t, l, "hold", "12\n")
		rev := l.put(t, "b", "1")
		var holder *node
		eventually(t, time.Minute, func() bool {
			runs := l.hookRuns(f.runsLen)
			if len(runs) == 0 {
				return false
			}
			for _, n := range l.nodes {
				if n.name == runs[0].node {
					holder = n
				}
			}
			return true
		}, "a node starts its on_change")
		l.cut(holder)
		l.convergedOn(t, rev, l.others(holder), 3*time.Minute)
		writeShared(t, l, "hold", "0\n")
		l.heal(holder)
		l.converged(t, rev, "b", "1", 3*time.Minute)
		runs := l.hookRuns(f.runsLen)
		for i, a := range runs {
			for _, b := range runs[i+1:] {
				if a.node != b.node && a.start < b.end && b.start < a.end {
					t.Errorf("on_change of %s (%.1f to %.1f) overlaps %s's (%.1f to %.1f)", a.node, a.start, a.end, b.node, b.start, b.end)
				}
			}
		}
		t.Logf("on_change runs: %+v", runs)
		l.after(t, f, "cut")
	})

	t.Run("LeaderPartitioned", func(t *testing.T) {
		f := l.begin(t)
		m := l.leader(t)
		l.must("ip", "-n", swNS, "link", "set", m.name, "down")
		rev := l.put(t, "a", "leader-away")
		l.converged(t, rev, "a", "leader-away", 3*time.Minute)
		l.must("ip", "-n", swNS, "link", "set", m.name, "up")
		eventually(t, time.Minute, func() bool { _, err := l.etcdctl("endpoint", "health", "--cluster"); return err == nil }, "etcd heals")
		l.after(t, f, "leader")
	})

	// A node on the minority side: one member cut off from the other two,
	// and the node able to reach only that member. It must stop being
	// ready (no leader, no linearizable read) and change nothing, while
	// the majority side converges; healed, it converges.
	t.Run("NodeWithTheMinority", func(t *testing.T) {
		f := l.begin(t)
		n, m := l.nodes[2], l.etcd[2]
		var rules [][]string
		for _, other := range l.etcd[:2] {
			rules = append(rules,
				[]string{"netns", "exec", m.ns, "iptables", "-A", "INPUT", "-s", other.ip, "-j", "DROP"},
				[]string{"netns", "exec", n.ns, "iptables", "-A", "OUTPUT", "-d", other.ip, "-j", "DROP"})
		}
		for _, r := range rules {
			l.must("ip", r...)
		}
		healed := false
		heal := func() {
			if healed {
				return
			}
			healed = true
			for _, r := range rules {
				r[4] = "-D"
				l.must("ip", r...)
			}
		}
		defer heal()
		eventually(t, 2*time.Minute, func() bool { return n.readyz() != "ok" }, "%s, with the minority member only, stops being ready", n.name)
		before := n.serves("a")
		rev := l.put(t, "a", "majority")
		// A few seconds: every request, the agents' and ccm status's,
		// goes to a member with a leader (cluster.requireLeader). Before,
		// one in three waited on the cut-off member until its deadline,
		// and ccm status failed for minutes (more than 5 once in CI).
		l.convergedOn(t, rev, l.others(n), 2*time.Minute)
		if got := n.serves("a"); got != before {
			t.Errorf("%s changed a on the minority side: %q, was %q", n.name, got, before)
		}
		heal()
		eventually(t, time.Minute, func() bool { _, err := l.etcdctl("endpoint", "health", "--cluster"); return err == nil }, "etcd heals")
		l.converged(t, rev, "a", "majority", 3*time.Minute)
		l.after(t, f, "minority")
	})

	t.Run("IsolatedLongerThanTheLease", func(t *testing.T) {
		f := l.begin(t)
		n := l.nodes[1]
		l.cut(n)
		eventually(t, time.Minute, func() bool { return !l.alive(n.name) }, "%s's presence expires with its lease", n.name)
		rev := l.put(t, "a", "isolated")
		l.convergedOn(t, rev, l.others(n), 3*time.Minute)
		l.heal(n)
		l.converged(t, rev, "a", "isolated", 3*time.Minute)
		l.after(t, f, "isolated")
	})

	t.Run("OneWayLoss", func(t *testing.T) {
		f := l.begin(t)
		n := l.nodes[2]
		// The node sends, and hears nothing back.
		drop := []string{"netns", "exec", n.ns, "iptables", "-A", "INPUT", "-s", subnet + "0/24", "-j", "DROP"}
		l.must("ip", drop...)
		eventually(t, time.Minute, func() bool { return !l.alive(n.name) }, "%s's presence expires: its keepalives reach etcd, the answers do not", n.name)
		rev := l.put(t, "a", "one-way")
		l.convergedOn(t, rev, l.others(n), 3*time.Minute)
		drop[4] = "-D"
		l.must("ip", drop...)
		l.converged(t, rev, "a", "one-way", 3*time.Minute)
		l.after(t, f, "one-way")
	})

	// A slow link: 200 ms each way between one node and every etcd
	// member. tc netem where the kernel has it; else (this project's
	// machines have no sch_netem) a relay in the switch's namespace that
	// holds every chunk 200 ms in each direction, which the node's
	// CCM_ENDPOINTS point at for the test.
	t.Run("SlowLink", func(t *testing.T) {
		n := l.nodes[1]
		f := l.begin(t)
		if _, err := runShort("tc", "-n", swNS, "qdisc", "add", "dev", n.name, "root", "netem", "delay", "200ms"); err == nil {
			defer l.must("tc", "-n", swNS, "qdisc", "del", "dev", n.name, "root")
			l.must("ip", "netns", "exec", n.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "200ms")
			defer l.must("ip", "netns", "exec", n.ns, "tc", "qdisc", "del", "dev", "eth0", "root")
		} else {
			t.Logf("no netem here (%v): a relay delays %s's traffic to etcd instead", err, n.name)
			eps := l.startRelay(t, relayDelay)
			n.setEndpoints(t, eps)
			defer n.setEndpoints(t, l.endpoints())
		}
		rev := l.put(t, "a", "slow")
		l.converged(t, rev, "a", "slow", 3*time.Minute)
		l.after(t, f, "slow")
		if raw, err := os.ReadFile(filepath.Join(l.work, "relay.log")); err == nil {
			conns := strings.Count(string(raw), "relay: "+n.ip+":")
			t.Logf("%s's connections through the relay: %d", n.name, conns)
			if conns == 0 {
				t.Errorf("%s never went through the slow relay:\n%s", n.name, raw)
			}
		}
	})
	restarts := map[string]int{}
	for _, n := range l.nodes {
		restarts[n.name], _ = strconv.Atoi(n.show("NRestarts"))
	}
	names := make([]string, 0, len(restarts))
	for k := range restarts {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		t.Logf("%s: NRestarts %d after every fault", k, restarts[k])
	}
}

// relayDelay is how long the slow link holds each chunk, each way.
const relayDelay = 200 * time.Millisecond

// relayEnv carries the relay's listen=target pairs to the helper process.
const relayEnv = "CCM_NODES_RELAY"

// startRelay starts the relay (this test binary, as TestDelayRelay) in the
// switch's namespace, one port per etcd member, and returns the endpoints
// that go through it.
func (l *lab) startRelay(t *testing.T, delay time.Duration) string {
	var pairs, eps []string
	for i, m := range l.etcd {
		listen := fmt.Sprintf("%s1:%d", subnet, 23790+i)
		pairs = append(pairs, listen+"="+m.ip+":2379")
		eps = append(eps, "http://"+listen)
	}
	cmd := exec.Command("ip", "netns", "exec", swNS, os.Args[0], "-test.run=^TestDelayRelay$", "-test.timeout=0")
	cmd.Env = []string{hostPath, relayEnv + "=" + strings.Join(pairs, ","), "CCM_NODES_RELAY_DELAY=" + delay.String()}
	log, err := os.Create(filepath.Join(l.work, "relay.log"))
	require(t, err)
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	require(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	eventually(t, 30*time.Second, func() bool {
		_, err := runShort("ip", "netns", "exec", swNS, "curl", "-s", "-m", "5", eps[0]+"/health")
		return err == nil
	}, "the relay answers")
	return strings.Join(eps, ",")
}

// setEndpoints points the node's agent at eps and restarts it.
func (n *node) setEndpoints(t *testing.T, eps string) {
	t.Helper()
	n.must("sed", "-i", "s|^CCM_ENDPOINTS=.*|CCM_ENDPOINTS="+eps+"|", "/etc/default/ccm")
	n.must("systemctl", "restart", "ccm")
	eventually(t, 2*time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready through %s (it says %q)", n.name, eps, n.readyz())
}

// TestDelayRelay is the relay's process, not a test: it runs only when
// startRelay sets CCM_NODES_RELAY, and forwards each listen address to its
// target, holding every chunk for the delay in each direction, in order.
func TestDelayRelay(t *testing.T) {
	spec := os.Getenv(relayEnv)
	if spec == "" {
		t.Skip("the relay of TestNodes/NetworkFaults/SlowLink")
	}
	delay, err := time.ParseDuration(os.Getenv("CCM_NODES_RELAY_DELAY"))
	require(t, err)
	for _, pair := range strings.Split(spec, ",") {
		listen, target, _ := strings.Cut(pair, "=")
		ln, err := net.Listen("tcp", listen)
		require(t, err)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Printf("relay: %s to %s\n", c.RemoteAddr(), target)
				go relay(c, target, delay)
			}
		}()
	}
	select {} // until startRelay kills it
}

// relay joins c to a new connection to target, delaying both directions.
func relay(c net.Conn, target string, delay time.Duration) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { delayedCopy(u, c, delay); done <- struct{}{} }()
	go func() { delayedCopy(c, u, delay); done <- struct{}{} }()
	<-done
}

// delayedCopy copies src to dst, each chunk written delay after it was read.
func delayedCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			k, err := src.Read(buf)
			if k > 0 {
				q <- chunk{time.Now().Add(delay), buf[:k]}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		time.Sleep(time.Until(ch.at))
		if _, err := dst.Write(ch.data); err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
}
