package etcdtest

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Members is a cluster of Debian's etcd processes on loopback, without TLS:
// processes, so that a test can freeze them (SIGSTOP) as a hung machine
// or a stalled disk would, kill them, and start them again.
type Members struct {
	t       testing.TB
	bin     string
	members []*process
	cluster string // the --initial-cluster value
}

type process struct {
	name, client, peer, data string
	cmd                      *exec.Cmd
	stderr                   *bytes.Buffer
}

// StartMembers starts n etcd processes as one cluster, or skips the test
// when Debian's etcd is not installed; extra flags go to every member.
func StartMembers(t testing.TB, n int, extra ...string) *Members {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not installed (apt-get install etcd-server)")
	}
	m := &Members{t: t, bin: bin}
	var peers []string
	for i := range n {
		p := &process{name: fmt.Sprintf("m%d", i), client: "http://" + freeAddr(t), peer: "http://" + freeAddr(t), data: t.TempDir()}
		m.members = append(m.members, p)
		peers = append(peers, p.name+"="+p.peer)
	}
	m.cluster = strings.Join(peers, ",")
	for _, p := range m.members {
		m.start(p, "new", extra)
	}
	t.Cleanup(func() {
		for _, p := range m.members {
			if p.cmd != nil {
				_ = p.cmd.Process.Signal(syscall.SIGCONT)
				_ = p.cmd.Process.Kill()
				_, _ = p.cmd.Process.Wait()
			}
		}
	})
	return m
}

func (m *Members) start(p *process, state string, extra []string) {
	p.stderr = &bytes.Buffer{}
	p.cmd = exec.Command(m.bin, append([]string{
		"--name", p.name, "--data-dir", p.data,
		"--listen-client-urls", p.client, "--advertise-client-urls", p.client,
		"--listen-peer-urls", p.peer, "--initial-advertise-peer-urls", p.peer,
		"--initial-cluster", m.cluster, "--initial-cluster-state", state,
		"--log-level", "error",
	}, extra...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
}

// Endpoints returns every member's client URL.
func (m *Members) Endpoints() []string {
	var out []string
	for _, p := range m.members {
		out = append(out, p.client)
	}
	return out
}

// Freeze stops members with SIGSTOP: their sockets stay open and nothing
// answers, as with a hung machine.
func (m *Members) Freeze(members ...int) { m.signal(syscall.SIGSTOP, members) }

// Thaw resumes frozen members.
func (m *Members) Thaw(members ...int) { m.signal(syscall.SIGCONT, members) }

func (m *Members) signal(sig syscall.Signal, members []int) {
	for _, i := range members {
		if err := m.members[i].cmd.Process.Signal(sig); err != nil {
			m.t.Fatal(err)
		}
	}
}

// Kill kills members with SIGKILL, keeping their data.
func (m *Members) Kill(members ...int) {
	for _, i := range members {
		p := m.members[i]
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		p.cmd = nil
	}
}

// Restart starts killed members again with their data.
func (m *Members) Restart(members ...int) {
	for _, i := range members {
		m.start(m.members[i], "existing", nil)
	}
}

// WaitHealthy waits until every member answers etcdctl endpoint health.
func (m *Members) WaitHealthy(timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command("etcdctl", "--endpoints", strings.Join(m.Endpoints(), ","), "endpoint", "health").CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("etcd members not healthy within %s: %s", timeout, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
