//go:build nodes

package nodes

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hostileUsers are customer objects of the example's users type, each an
// attempt at root: system accounts by name, a newline in a hash, a cron
// schedule with a sixth word, uid 0 and nobody's. One benign customer
// beside them must converge.
var hostileUsers = map[string]string{
	"cust1":  `{"uid":3101,"crontab":[{"schedule":"*/5 * * * *","command":"true"}]}`,
	"root":   `{"uid":3102,"crontab":[{"schedule":"* * * * *","command":"id > /tmp/pwned-root"}]}`,
	"daemon": `{"uid":3103,"crontab":[{"schedule":"* * * * *","command":"id"}]}`,
	"nobody": `{"uid":3104}`,
	"sudo":   `{"uid":3105}`,
	"adm":    `{"uid":3106}`,
	"mal1":   `{"uid":3107,"password_hash":"$6$abc\nroot:$6$PWNED"}`,
	"mal2":   `{"uid":3108,"crontab":[{"schedule":"* * * * * root","command":"id > /tmp/pwned"}]}`,
	"mal3":   `{"uid":0}`,
	"mal4":   `{"uid":65534}`,
}

// systemLines are a node's passwd, shadow and group lines of accounts
// below 1000 (and nobody's).
func systemLines(n *node) string {
	var keep []string
	ids := map[string]int{}
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		for _, l := range strings.Split(n.must("cat", f), "\n") {
			p := strings.Split(l, ":")
			if len(p) < 3 {
				continue
			}
			id, _ := strconv.Atoi(p[2])
			if f == "/etc/passwd" {
				ids[p[0]] = id
			}
			if id < 1000 || id >= 60000 {
				keep = append(keep, l)
			}
		}
	}
	for _, l := range strings.Split(n.must("cat", "/etc/shadow"), "\n") {
		p := strings.Split(l, ":")
		if id, ok := ids[p[0]]; ok && (id < 1000 || id >= 60000) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// The hostile part of the corpus on real nodes: the Debian package under
// systemd, the example's unix-users and crontab with the node's own
// useradd and chpasswd at / (no --root), as production runs them.
func testHostileUsersOnRealNodes(t *testing.T, l *lab) {
	before := map[string]string{}
	for _, n := range l.nodes {
		before[n.name] = systemLines(n)
		for _, f := range []string{"unix-users.yaml", "crontab.yaml", "templates/crontab.tmpl"} {
			body, err := os.ReadFile(filepath.Join("../../examples/ccm", f))
			if err != nil {
				t.Fatal(err)
			}
			n.write("/etc/ccm/"+f, string(body), 0o644)
		}
		n.must("systemctl", "reload", "ccm")
	}
	var rev int64
	for id, v := range hostileUsers {
		out, err := l.etcdctl("put", "-w", "json", "/ccm/objects/users/"+id, v)
		if err != nil {
			t.Fatalf("put users/%s: %v: %s", id, err, out)
		}
		if i := strings.Index(out, `"revision":`); i >= 0 {
			r, _ := strconv.ParseInt(strings.TrimRight(strings.SplitN(out[i+11:], ",", 2)[0], "}"), 10, 64)
			rev = max(rev, r)
		}
	}
	l.convergedOn(t, rev, l.nodes, 5*time.Minute)
	for _, n := range l.nodes {
		if got := systemLines(n); got != before[n.name] {
			t.Errorf("%s: the system accounts changed:\nbefore:\n%s\nafter:\n%s", n.name, before[n.name], got)
		}
		if shadow := n.must("cat", "/etc/shadow"); strings.Contains(shadow, "PWNED") {
			t.Errorf("%s: a hash from data reached shadow", n.name)
		}
		for _, id := range []string{"root", "daemon", "nobody", "sudo", "adm"} {
			if _, err := n.exec("test", "-e", "/etc/cron.d/ccm-"+id); err == nil {
				t.Errorf("%s: /etc/cron.d/ccm-%s exists: a cron file for a system account", n.name, id)
			}
		}
		if _, err := n.exec("test", "-e", "/etc/cron.d/ccm-cust1"); err != nil {
			t.Errorf("%s: the benign customer's cron file is missing", n.name)
		}
		cron := n.must("sh", "-c", "cat /etc/cron.d/ccm-* 2>/dev/null || true")
		for _, line := range strings.Split(cron, "\n") {
			f := strings.Fields(line)
			if len(f) >= 6 && !strings.HasPrefix(f[0], "#") && !strings.Contains(f[0], "=") && f[5] != "cust1" {
				t.Errorf("%s: a cron line runs as %q: %q", n.name, f[5], line)
			}
		}
	}
}
