//go:build nodes

package nodes

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The lab's addresses: a bridge in the switch namespace, etcd members at
// .11-.13 and nodes at .21 and up. They exist only in namespaces the lab
// makes and removes.
const (
	subnet   = "10.239.0."
	nsPrefix = "ccmn-"
	swNS     = nsPrefix + "sw"
)

// hostPath is the PATH of every command the lab runs, on the host and in
// a node.
const hostPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imagePackages are what a node's root holds besides minbase: systemd as
// PID 1, and the services the example stack manages.
var imagePackages = []string{"systemd", "systemd-sysv", "dbus", "nginx", "php8.2-fpm", "iproute2"}

// lab is one run of the harness: the switch, the etcd members and the
// nodes, all removed at the end of the test.
type lab struct {
	t      *testing.T
	work   string // per-run directory: overlays, etcd data, logs
	shared string // bind-mounted as /shared in every node
	ccm    string // the package's own binary, extracted, for the CLI on the host
	debs   [2]string
	etcd   []*member
	nodes  []*node
}

// member is one etcd member in a namespace of its own.
type member struct {
	name, ns, ip string
	cmd          *exec.Cmd
	args         []string
}

// node is one booted container.
type node struct {
	lab      *lab
	name, ns string
	ip       string
	root     string // the overlay's merged root
	nspawn   *exec.Cmd
	leader   int // PID 1 of the container, in the host's PID namespace
}

// run runs a command on the host and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = []string{hostPath, "LANG=C.UTF-8"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// must runs a command on the host and fails the test if it fails.
func (l *lab) must(name string, args ...string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := run(ctx, name, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// eventually polls cond every 200 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: "+what, append([]any{timeout}, args...)...)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cacheDir is where the root image is kept between runs.
func cacheDir() string {
	if d := os.Getenv("CCM_NODES_CACHE"); d != "" {
		return d
	}
	return "/var/cache/ccm-test"
}

// image returns the cached Debian 12 root, building it first if needed:
// debootstrap minbase with imagePackages, from the mirror apt uses here.
func image(t *testing.T) string {
	t.Helper()
	key := "bookworm-" + strings.Join(imagePackages, "+")
	dir := filepath.Join(cacheDir(), key)
	if _, err := os.Stat(filepath.Join(dir, ".ccm-image")); err == nil {
		return dir
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	require(t, os.MkdirAll(cacheDir(), 0o755))
	t.Logf("building the node image in %s (debootstrap, several minutes, once per machine)", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	if out, err := run(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(imagePackages, ","), "bookworm", tmp, mirror()); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(out, 40))
	}
	// The nodes' etcd and tests find each other by address, not name.
	require(t, os.WriteFile(filepath.Join(tmp, ".ccm-image"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644))
	require(t, os.Rename(tmp, dir))
	t.Logf("node image built in %s", time.Since(start).Round(time.Second))
	return dir
}

// mirror is the Debian mirror apt uses on this machine (CCM_NODES_MIRROR
// overrides it).
func mirror() string {
	if m := os.Getenv("CCM_NODES_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, "/etc/apt/sources.list")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			line = strings.TrimSpace(line)
			if u, ok := strings.CutPrefix(line, "URIs:"); ok && strings.HasSuffix(strings.TrimSpace(u), "/debian") {
				return strings.TrimSpace(u)
			}
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "deb" && strings.HasSuffix(f[1], "/debian") {
				return f[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

func require(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newLab makes the switch, 3 etcd members and n nodes, boots the nodes
// and installs the package on each; cleanup removes all of it.
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the node harness runs as root")
	}
	debs := [2]string{os.Getenv("CCM_NODES_DEB"), os.Getenv("CCM_NODES_DEB_NEXT")}
	if debs[0] == "" || debs[1] == "" {
		t.Skip("CCM_NODES_DEB and CCM_NODES_DEB_NEXT name the packages to test (make nodes-test)")
	}
	img := image(t)
	l := &lab{t: t, debs: debs}
	l.work = fmt.Sprintf("/var/tmp/ccm-nodes-%d", os.Getpid())
	l.shared = filepath.Join(l.work, "shared")
	require(t, os.MkdirAll(l.shared, 0o777))
	require(t, os.Chmod(l.shared, 0o1777))
	t.Cleanup(l.close)
	l.removeLeftovers()

	l.must("dpkg-deb", "-x", debs[0], filepath.Join(l.work, "deb"))
	l.ccm = filepath.Join(l.work, "deb", "usr", "bin", "ccm")

	l.must("ip", "netns", "add", swNS)
	l.must("ip", "-n", swNS, "link", "set", "lo", "up")
	l.must("ip", "-n", swNS, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", swNS, "addr", "add", subnet+"1/24", "dev", "br0")
	l.must("ip", "-n", swNS, "link", "set", "br0", "up")

	var cluster []string
	for i := 1; i <= 3; i++ {
		m := &member{name: fmt.Sprintf("e%d", i), ip: fmt.Sprintf("%s1%d", subnet, i)}
		m.ns = nsPrefix + m.name
		cluster = append(cluster, fmt.Sprintf("%s=http://%s:2380", m.name, m.ip))
		l.etcd = append(l.etcd, m)
	}
	for _, m := range l.etcd {
		l.plug(m.ns, m.name, m.ip)
		m.args = []string{"netns", "exec", m.ns, "etcd", "--name", m.name, "--data-dir", filepath.Join(l.work, m.name),
			"--listen-client-urls", "http://" + m.ip + ":2379", "--advertise-client-urls", "http://" + m.ip + ":2379",
			"--listen-peer-urls", "http://" + m.ip + ":2380", "--initial-advertise-peer-urls", "http://" + m.ip + ":2380",
			"--initial-cluster", strings.Join(cluster, ","), "--initial-cluster-state", "new", "--initial-cluster-token", "ccm-nodes"}
		l.startMember(m)
	}
	eventually(t, time.Minute, func() bool { _, err := l.etcdctl("endpoint", "health", "--cluster"); return err == nil }, "etcd has its 3 members")

	for i := 1; i <= n; i++ {
		l.nodes = append(l.nodes, l.boot(img, fmt.Sprintf("n%d", i), fmt.Sprintf("%s2%d", subnet, i)))
	}
	return l
}

// removeLeftovers removes what a killed run of the harness left: its
// namespaces (only the lab's, by their prefix) and mounts under /var/tmp.
func (l *lab) removeLeftovers() {
	out, _ := run(context.Background(), "ip", "netns", "list")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			_, _ = run(context.Background(), "ip", "netns", "del", f[0])
		}
	}
}

// plug gives namespace ns (made here) a veth on the bridge with address ip;
// the bridge's end is named port.
func (l *lab) plug(ns, port, ip string) {
	l.must("ip", "netns", "add", ns)
	l.must("ip", "-n", ns, "link", "set", "lo", "up")
	l.must("ip", "-n", swNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.must("ip", "-n", swNS, "link", "set", port, "master", "br0", "up")
	l.must("ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
	l.must("ip", "-n", ns, "link", "set", "eth0", "up")
}

func (l *lab) startMember(m *member) {
	log, err := os.OpenFile(filepath.Join(l.work, m.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require(l.t, err)
	defer log.Close()
	m.cmd = exec.Command("ip", m.args...)
	m.cmd.Env = []string{hostPath}
	m.cmd.Stdout, m.cmd.Stderr = log, log
	require(l.t, m.cmd.Start())
}

// endpoints are the etcd members' client URLs.
func (l *lab) endpoints() string {
	var eps []string
	for _, m := range l.etcd {
		eps = append(eps, "http://"+m.ip+":2379")
	}
	return strings.Join(eps, ",")
}

// etcdctl runs Debian's etcdctl from the switch's namespace.
func (l *lab) etcdctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return run(ctx, "ip", append([]string{"netns", "exec", swNS, "env", "ETCDCTL_API=3", "etcdctl", "--endpoints", l.endpoints(), "--command-timeout", "5s"}, args...)...)
}

// cli runs the package's ccm as a CLI from the switch's namespace.
func (l *lab) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return run(ctx, "ip", append([]string{"netns", "exec", swNS, l.ccm, "--endpoints", l.endpoints(), "--log-level", "error", "--timeout", "10s"}, args...)...)
}

// boot makes a node: an overlay of the image, its namespace on the
// bridge, the package's settings; then boots it and installs the
// package with dpkg.
func (l *lab) boot(img, name, ip string) *node {
	t := l.t
	n := &node{lab: l, name: name, ns: nsPrefix + name, ip: ip}
	dir := filepath.Join(l.work, name)
	for _, d := range []string{"upper", "work", "root"} {
		require(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	n.root = filepath.Join(dir, "root")
	l.must("mount", "-t", "overlay", "overlay", "-o",
		fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", img, filepath.Join(dir, "upper"), filepath.Join(dir, "work")), n.root)
	l.plug(n.ns, name, ip)

	n.write("/etc/hostname", name+"\n", 0o644)
	for path, body := range nodeConfig {
		mode := os.FileMode(0o644)
		if strings.Contains(path, "/bin/") {
			mode = 0o755
		}
		n.write(path, body, mode)
	}
	for i, deb := range l.debs {
		raw, err := os.ReadFile(deb)
		require(t, err)
		n.write(fmt.Sprintf("/root/ccm-%d.deb", i), string(raw), 0o644)
	}

	log, err := os.Create(filepath.Join(dir, "console.log"))
	require(t, err)
	defer log.Close()
	// Each node boots in cgroups of its own: with --keep-unit and no
	// systemd on the host, nspawn leaves the container in the cgroup it
	// was started in, and three nodes in one would share one
	// system.slice/ccm.service, each sweeping the others' runs.
	cgs := l.cgroups(name)
	n.nspawn = exec.Command("sh", "-c", `for cg in $CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 1; done; exec "$@"`, "sh",
		"systemd-nspawn", "-D", n.root, "--register=no", "--keep-unit", "--boot",
		"--network-namespace-path=/run/netns/"+n.ns, "--machine="+name, "--bind="+l.shared+":/shared", "--console=passive")
	n.nspawn.Env = []string{hostPath, "CGROUPS=" + strings.Join(cgs, " ")}
	n.nspawn.Stdout, n.nspawn.Stderr = log, log
	require(t, n.nspawn.Start())
	eventually(t, time.Minute, func() bool { n.leader = leaderOf(n.nspawn.Process.Pid); return n.leader != 0 }, "%s's systemd starts", name)
	eventually(t, 2*time.Minute, func() bool {
		out, _ := n.exec("systemctl", "is-system-running", "--wait")
		return strings.TrimSpace(out) == "running"
	}, "%s boots with no failed unit", name)
	n.must("useradd", "--create-home", "--shell", "/bin/sh", "alice")
	n.must("dpkg", "-i", "/root/ccm-0.deb")
	// As an operator does: the package's /etc/default/ccm, then its settings.
	n.write("/etc/default/ccm", fmt.Sprintf(`CCM_ENDPOINTS=%s
CCM_NODE=%s
CCM_LABEL=role=web
CCM_METRICS_ADDR=127.0.0.1:9310
CCM_DEBOUNCE=1s
CCM_LOCK_TTL=5s
`, l.endpoints(), name), 0o600)
	return n
}

// cgroups makes the node's cgroup in the cgroup v2 hierarchy and, on a
// host with the hybrid layout, in the name=systemd one.
func (l *lab) cgroups(name string) []string {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	require(l.t, err)
	var dirs []string
	for _, line := range strings.Split(string(raw), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 {
			continue
		}
		if strings.HasPrefix(post, "cgroup2 ") || (strings.HasPrefix(post, "cgroup ") && strings.Contains(post, "name=systemd")) {
			dir := filepath.Join(f[4], filepath.Base(l.work), name)
			require(l.t, os.MkdirAll(dir, 0o755))
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// removeCgroups removes the lab's cgroups, deepest first, once the nodes
// are down.
func (l *lab) removeCgroups() {
	raw, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(raw), "\n") {
		pre, _, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 {
			top := filepath.Join(f[4], filepath.Base(l.work))
			var dirs []string
			_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				_ = os.Remove(dirs[i])
			}
		}
	}
}

// leaderOf is the container's PID 1: the child of systemd-nspawn that
// runs systemd.
func leaderOf(nspawn int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawn, nspawn))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(raw)) {
		pid, _ := strconv.Atoi(f)
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
			return pid
		}
	}
	return 0
}

// write puts a file into the node's root (before or after boot).
func (n *node) write(path, body string, mode os.FileMode) {
	full := filepath.Join(n.root, path)
	require(n.lab.t, os.MkdirAll(filepath.Dir(full), 0o755))
	require(n.lab.t, os.WriteFile(full, []byte(body), mode))
	require(n.lab.t, os.Chmod(full, mode))
}

// exec runs a command inside the node: in all of its namespaces, with a
// clean environment.
func (n *node) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nsenter := []string{"-t", strconv.Itoa(n.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--", "/usr/bin/env", "-i", hostPath, "LANG=C.UTF-8"}
	return run(ctx, "nsenter", append(nsenter, args...)...)
}

func (n *node) must(args ...string) string {
	n.lab.t.Helper()
	out, err := n.exec(args...)
	if err != nil {
		n.lab.t.Fatalf("%s: %v", n.name, err)
	}
	return out
}

// show reads one property of the ccm unit.
func (n *node) show(prop string) string {
	out, _ := n.exec("systemctl", "show", "-P", prop, "ccm")
	return strings.TrimSpace(out)
}

// readyz is what the agent's /readyz answers, from the node's namespace.
func (n *node) readyz() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := run(ctx, "ip", "netns", "exec", n.ns, "curl", "-s", "-m", "5", "http://127.0.0.1:9310/readyz")
	if err != nil {
		return "unreachable: " + err.Error()
	}
	return strings.TrimSpace(out)
}

// close stops the nodes and members and removes what the lab made.
func (l *lab) close() {
	if l.t.Failed() {
		for _, n := range l.nodes {
			if n.leader != 0 {
				out, _ := n.exec("journalctl", "-u", "ccm", "--no-pager", "-n", "60", "-o", "cat")
				l.t.Logf("%s: journal of ccm:\n%s", n.name, out)
			}
		}
	}
	for _, n := range l.nodes {
		if n.nspawn != nil && n.nspawn.Process != nil {
			_ = n.nspawn.Process.Signal(syscall.SIGTERM) // nspawn powers the container off
			done := make(chan struct{})
			go func() { _ = n.nspawn.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = n.nspawn.Process.Kill()
				<-done
			}
		}
		_, _ = run(context.Background(), "umount", "-l", n.root)
	}
	for _, m := range l.etcd {
		if m.cmd != nil && m.cmd.Process != nil {
			_ = m.cmd.Process.Kill()
			_ = m.cmd.Wait()
		}
	}
	l.removeLeftovers()
	l.removeCgroups()
	if !l.t.Failed() || os.Getenv("CCM_NODES_KEEP") == "" {
		_ = os.RemoveAll(l.work)
	}
}

// status is `ccm status --json`, decoded.
func (l *lab) status() (map[string]any, error) {
	out, err := l.cli("status", "--json")
	if err != nil {
		return nil, err
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("ccm status --json: %w: %s", err, out)
	}
	return st, nil
}
