//go:build nodes

package nodes

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeConfig is every node's /etc/ccm: the example stack's vhosts as
// production runs them (validate: nginx -t, on_change: systemctl reload
// nginx), a hook that records each on_change on the clock all nodes share
// (/shared/runs.log), and two actions run as alice.
var nodeConfig = map[string]string{
	"/etc/ccm/vhosts.yaml": `name: vhosts
subscribes: [sites]
files:
  - path: /etc/nginx/sites-enabled/{{ .Object.ID }}.conf
    for_each: sites
    mode: "0644"
    owner: alice
    content: |
      server {
        listen 80;
        server_name {{ .Object.ID }}.example;
        location / { return 200 "{{ .Object.ID }} {{ .Object.Data.v }}\n"; }
      }
validate: [nginx, -t]
on_change:
  - [systemctl, reload, nginx]
  - [/etc/ccm/bin/record]
timeout: 120s
`,
	// record: one line when this node's on_change starts, one every 0.2 s
	// while it holds (/shared/hold seconds), one when it ends.
	"/etc/ccm/bin/record": `#!/bin/sh
now() { date +%s.%N; }
echo "start $CCM_NODE $(now)" >> /shared/runs.log
hold=$(cat /shared/hold 2>/dev/null || echo 0)
end=$(( $(date +%s) + hold ))
while [ "$(date +%s)" -lt "$end" ]; do
  echo "tick $CCM_NODE $(now)" >> /shared/runs.log
  sleep 0.2
done
echo "end $CCM_NODE $(now)" >> /shared/runs.log
`,
	"/etc/ccm/actions/whoami.yaml": `name: whoami
command: [./actions/bin/whoami]
run_as: {user: alice}
timeout: 30s
`,
	"/etc/ccm/actions/bin/whoami": `#!/bin/sh
echo "$CCM_ACTION_ID $CCM_NODE" >> /shared/actions.log
id -un
`,
	// hang leaves a setsid child (its own session and process group) and
	// outlives its timeout: only the run's cgroup can end the child.
	"/etc/ccm/actions/hang.yaml": `name: hang
command: [./actions/bin/hang]
run_as: {user: alice}
timeout: 3s
`,
	"/etc/ccm/actions/bin/hang": `#!/bin/sh
setsid sh -c 'echo $$ > /tmp/hang.tmp; mv /tmp/hang.tmp /tmp/hang.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &
exec sleep 300
`,
}

// TestNodes boots the nodes once and runs each promise on them in turn:
// the unit's life cycle first, then the network faults.
func TestNodes(t *testing.T) {
	start := time.Now()
	l := newLab(t, 3)
	t.Logf("lab up in %s: 3 etcd members, %d nodes booted with the package installed", time.Since(start).Round(time.Second), len(l.nodes))
	// A watchdog far longer than any wait here: STATUS= must follow
	// readiness by itself, not ride on the watchdog ping.
	for _, n := range l.nodes {
		n.write("/etc/systemd/system/ccm.service.d/watchdog.conf", "[Service]\nWatchdogSec=20min\n", 0o644)
		n.must("systemctl", "daemon-reload")
	}
	ok := t.Run("EnableNowConverges", func(t *testing.T) { testEnableNowConverges(t, l) })
	if !ok {
		t.FailNow()
	}
	t.Run("StatusTextFollowsReadyz", func(t *testing.T) { testStatusTextFollowsReadyz(t, l) })
	t.Run("ReloadWithoutProcps", func(t *testing.T) { testReloadWithoutProcps(t, l) })
	t.Run("ActionsUnderTheUnit", func(t *testing.T) { testActionsUnderTheUnit(t, l) })
	t.Run("SecurityMeasuredLive", func(t *testing.T) { testSecurityMeasuredLive(t, l) })
	t.Run("StopStartRestartUpgrade", func(t *testing.T) { testStopStartRestartUpgrade(t, l) })
	t.Run("WatchdogRestartsAFrozenAgent", func(t *testing.T) { testWatchdogRestartsAFrozenAgent(t, l) })
	t.Run("NetworkFaults", func(t *testing.T) { testNetworkFaults(t, l) })
	t.Run("HostileUsersOnRealNodes", func(t *testing.T) { testHostileUsersOnRealNodes(t, l) })
	t.Logf("make nodes-test: TestNodes took %s", time.Since(start).Round(time.Second))
}

// put writes sites/id with value v and returns the etcd revision of the write.
func (l *lab) put(t *testing.T, id, v string) int64 {
	t.Helper()
	// With a member cut off, a put may go to it first and time out: the
	// same value again is the same object.
	var out string
	eventually(t, 2*time.Minute, func() bool {
		var err error
		out, err = l.etcdctl("put", "-w", "json", "/ccm/objects/sites/"+id, fmt.Sprintf(`{"v": %q}`, v))
		return err == nil
	}, "put sites/%s", id)
	var resp struct {
		Header struct {
			Revision int64 `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("etcdctl put: %v: %s", err, out)
	}
	return resp.Header.Revision
}

// converged waits until every node reports a run at rev or later and
// nothing behind, and its nginx serves site id at version v.
func (l *lab) converged(t *testing.T, rev int64, id, v string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func() bool {
		st, err := l.status()
		if err != nil {
			return false
		}
		nodes, _ := st["nodes"].([]any)
		if len(nodes) < len(l.nodes) {
			return false
		}
		for _, raw := range nodes {
			nv, _ := raw.(map[string]any)
			if c, _ := nv["converged_revision"].(float64); int64(c) < rev || nv["behind"] == true {
				return false
			}
		}
		return true
	}, "every node reports revision %d converged", rev)
	for _, n := range l.nodes {
		eventually(t, 30*time.Second, func() bool { return n.serves(id) == id+" "+v }, "%s's nginx serves %s %s (it has %q)", n.name, id, v, n.serves(id))
	}
}

// serves is what the node's running nginx answers for site id.
func (n *node) serves(id string) string {
	out, err := runShort("ip", "netns", "exec", n.ns, "curl", "-s", "-m", "5", "-H", "Host: "+id+".example", "http://127.0.0.1/")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func testEnableNowConverges(t *testing.T, l *lab) {
	for _, n := range l.nodes {
		n.must("systemctl", "enable", "--now", "ccm")
	}
	for _, n := range l.nodes {
		eventually(t, time.Minute, func() bool { return n.readyz() == "ok" }, "%s: /readyz says ok (it says %q)", n.name, n.readyz())
	}
	rev := l.put(t, "a", "1")
	l.converged(t, rev, "a", "1", 2*time.Minute)
	for _, n := range l.nodes {
		// The file is alice's: CAP_CHOWN stays in the bounding set.
		if owner := strings.TrimSpace(n.must("stat", "-c", "%U", "/etc/nginx/sites-enabled/a.conf")); owner != "alice" {
			t.Errorf("%s: a.conf is owned by %s, want alice", n.name, owner)
		}
	}
}

// Before: `systemctl status ccm` said "not ready: object watch not synced
// with etcd" while /readyz said ok, until the next watchdog ping.
func testStatusTextFollowsReadyz(t *testing.T, l *lab) {
	n := l.nodes[0]
	eventually(t, time.Minute, func() bool { return n.show("StatusText") == "converging; watching etcd" },
		"%s: StatusText follows /readyz %q (it is %q)", n.name, n.readyz(), n.show("StatusText"))
	// Cut off from etcd: once /readyz says not ready, so does the status.
	l.cut(n)
	eventually(t, 2*time.Minute, func() bool {
		return strings.HasPrefix(n.readyz(), "not ready") || strings.Contains(n.readyz(), "no live session")
	},
		"%s: /readyz says not ready once cut off (it says %q)", n.name, n.readyz())
	eventually(t, time.Minute, func() bool { return strings.HasPrefix(n.show("StatusText"), "not ready: ") },
		"%s: StatusText says not ready (it is %q; /readyz %q)", n.name, n.show("StatusText"), n.readyz())
	l.heal(n)
	eventually(t, 2*time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready again (it says %q)", n.name, n.readyz())
	eventually(t, time.Minute, func() bool { return n.show("StatusText") == "converging; watching etcd" },
		"%s: StatusText follows /readyz back (it is %q)", n.name, n.show("StatusText"))
}

// Before: ExecReload=/bin/kill, from procps, which a node without PHP does
// not have: status=203/EXEC.
func testReloadWithoutProcps(t *testing.T, l *lab) {
	n := l.nodes[0]
	// Every program the unit runs is ccm's own or from an essential
	// package: none may come and go with another package.
	for _, prop := range []string{"ExecStart", "ExecReload", "ExecStop", "ExecStartPre", "ExecStartPost", "ExecStopPost"} {
		for _, m := range regexp.MustCompile(`path=(\S+)`).FindAllStringSubmatch(n.show(prop), -1) {
			pkg := owner(n.must("dpkg", "-S", m[1]))
			if pkg == "ccm" {
				continue
			}
			if ess := strings.TrimSpace(n.must("dpkg-query", "-W", "-f", "${Essential}", pkg)); ess != "yes" {
				t.Errorf("%s=%s is from package %s, which is not essential and which ccm does not depend on", prop, m[1], pkg)
			}
		}
	}
	// A node without procps (no PHP): its kill is gone.
	n.must("mv", "/bin/kill", "/bin/kill.procps")
	defer n.must("mv", "/bin/kill.procps", "/bin/kill")
	pid := n.show("MainPID")
	if out, err := n.exec("systemctl", "reload", "ccm"); err != nil {
		t.Fatalf("systemctl reload ccm without procps: %v\n%s", err, n.show("StatusText"))
	} else if strings.TrimSpace(out) != "" {
		t.Logf("reload said: %s", out)
	}
	if after := n.show("MainPID"); after != pid || n.show("ActiveState") != "active" {
		t.Errorf("the reload restarted the agent (MainPID %s, now %s, %s)", pid, after, n.show("ActiveState"))
	}
	eventually(t, 30*time.Second, func() bool {
		out, _ := n.exec("journalctl", "-u", "ccm", "-o", "cat", "--no-pager", "_PID="+pid)
		return strings.Contains(out, "SIGHUP") || strings.Contains(out, "reload")
	}, "%s: the agent logs the reload", n.name)
}

// Actions under the shipped unit: before, every one failed to start with
// ENOSYS from fork/exec ("function not implemented": RestrictNamespaces=yes
// refuses clone3).
func testActionsUnderTheUnit(t *testing.T, l *lab) {
	n := l.nodes[0]
	out, err := l.cli("action", "run", "whoami", "--node", n.name, "--json")
	if err != nil {
		t.Fatalf("ccm action run whoami: %v", err)
	}
	if !strings.Contains(out, `alice\n`) {
		t.Errorf("whoami did not run as alice: %s", out)
	}
	n.must("rm", "-f", "/tmp/hang.pid")
	out, _ = l.cli("action", "run", "hang", "--node", n.name, "--json")
	if !strings.Contains(out, `"timed_out"`) || !strings.Contains(out, "cgroup") {
		t.Fatalf("hang: want timed out, killed with its cgroup: %s", out)
	}
	pid := strings.TrimSpace(n.must("cat", "/tmp/hang.pid"))
	eventually(t, 10*time.Second, func() bool {
		stat, err := n.exec("cat", "/proc/"+pid+"/stat")
		return err != nil || strings.Contains(stat, ") Z ")
	}, "%s: the handler's setsid child %s dies with its run's cgroup", n.name, pid)
}

var exposure = regexp.MustCompile(`Overall exposure level for ccm\.service: ([0-9.]+) (\S+)`)

// The exposure systemd rates the running unit at, on a real systemd.
func testSecurityMeasuredLive(t *testing.T, l *lab) {
	n := l.nodes[0]
	out, _ := n.exec("systemd-analyze", "security", "--no-pager", "ccm")
	m := exposure.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security ccm: no overall exposure:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security ccm (live, systemd 252): %s %s", m[1], m[2])
	if score > 6.2 {
		t.Errorf("exposure %.1f, more than the 6.2 RELIABILITY states", score)
	}
}

// runs counts the on_change runs /shared/runs.log recorded per node.
func (l *lab) runs() map[string]int {
	raw, _ := readShared(l, "runs.log")
	counts := map[string]int{}
	for _, line := range strings.Split(raw, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "start" {
			counts[f[1]]++
		}
	}
	return counts
}

func testStopStartRestartUpgrade(t *testing.T, l *lab) {
	n := l.nodes[0]
	n.must("systemctl", "stop", "ccm")
	if st, res := n.show("ActiveState"), n.show("Result"); st != "inactive" || res != "success" {
		t.Errorf("stop: %s, result %s; want inactive, success (SIGTERM finishes and exits 0)", st, res)
	}
	n.must("systemctl", "start", "ccm")
	eventually(t, time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready after start", n.name)
	pid := n.show("MainPID")
	n.must("systemctl", "restart", "ccm")
	if after := n.show("MainPID"); after == pid || after == "0" {
		t.Errorf("restart: MainPID %s, then %s", pid, after)
	}
	eventually(t, time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready after restart", n.name)

	before := l.runs()
	oldVersion := strings.TrimSpace(n.must("dpkg-query", "-W", "-f", "${Version}", "ccm"))
	pid = n.show("MainPID")
	n.must("dpkg", "-i", "/root/ccm-1.deb")
	newVersion := strings.TrimSpace(n.must("dpkg-query", "-W", "-f", "${Version}", "ccm"))
	if newVersion == oldVersion {
		t.Fatalf("the upgrade kept version %s", oldVersion)
	}
	eventually(t, time.Minute, func() bool { p := n.show("MainPID"); return p != pid && p != "0" && n.readyz() == "ok" },
		"%s: the upgrade (%s to %s) restarted the agent", n.name, oldVersion, newVersion)
	rev := l.put(t, "a", "2")
	l.converged(t, rev, "a", "2", 2*time.Minute)
	after := l.runs()
	for _, m := range l.nodes {
		if after[m.name] != before[m.name]+1 {
			t.Errorf("%s: %d on_change runs across the upgrade and one change, want 1 (none repeated, none lost)", m.name, after[m.name]-before[m.name])
		}
	}
}

func testWatchdogRestartsAFrozenAgent(t *testing.T, l *lab) {
	n := l.nodes[0]
	n.write("/etc/systemd/system/ccm.service.d/watchdog.conf", "[Service]\nWatchdogSec=10s\n", 0o644)
	n.must("systemctl", "daemon-reload")
	n.must("systemctl", "restart", "ccm")
	eventually(t, time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready", n.name)
	restarts, pid := n.show("NRestarts"), n.show("MainPID")
	n.must("kill", "-STOP", pid)
	eventually(t, 2*time.Minute, func() bool {
		return n.show("NRestarts") != restarts && n.show("MainPID") != pid && n.show("ActiveState") == "active"
	}, "%s: systemd restarts the SIGSTOPped agent (NRestarts %s)", n.name, n.show("NRestarts"))
	eventually(t, time.Minute, func() bool { return n.readyz() == "ok" }, "%s: ready after the watchdog restart", n.name)
	rev := l.put(t, "a", "3")
	l.converged(t, rev, "a", "3", 2*time.Minute)
}

// owner is the package `dpkg -S` names, past its diversion lines.
func owner(dpkgS string) string {
	for _, line := range strings.Split(dpkgS, "\n") {
		if pkg, _, ok := strings.Cut(line, ": "); ok && !strings.HasPrefix(line, "diversion by ") {
			return strings.TrimSpace(pkg)
		}
	}
	return ""
}
