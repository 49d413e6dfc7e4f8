package etcdtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Members is a cluster of Debian's etcd processes on loopback: processes,
// so that a test can freeze them (SIGSTOP) as a hung machine or a stalled
// disk would, kill them, wipe one and start them again. With MembersTLS
// they serve TLS and ask for client certificates; EnableAuth turns on
// etcd's users and roles.
type Members struct {
	t       testing.TB
	bin     string
	members []*process
	cluster string   // the --initial-cluster value
	extra   []string // flags of every member, for restarts too
	// PKI is the certificate authority of a TLS cluster (nil: plain).
	PKI      *PKI
	rootAuth string // user:password once auth is enabled
	rootCert string
	rootKey  string
}

type process struct {
	name, client, peer, data string
	cmd                      *exec.Cmd
	stderr                   *bytes.Buffer
}

// MembersOptions configures StartMembers.
type MembersOptions struct {
	// TLS serves the client URLs over TLS with client-certificate
	// authentication (peers stay plain on loopback).
	TLS bool
	// Extra flags go to every member.
	Extra []string
}

// StartMembers starts n etcd processes as one cluster, or skips the test
// when Debian's etcd is not installed; extra flags go to every member.
func StartMembers(t testing.TB, n int, extra ...string) *Members {
	return StartMembersWith(t, n, MembersOptions{Extra: extra})
}

// StartMembersWith starts n etcd processes as one cluster configured by
// opts, or skips the test when Debian's etcd is not installed.
func StartMembersWith(t testing.TB, n int, opts MembersOptions) *Members {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not installed (apt-get install etcd-server)")
	}
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl not installed (apt-get install etcd-client)")
	}
	m := &Members{t: t, bin: bin, extra: opts.Extra}
	scheme := "http://"
	if opts.TLS {
		m.PKI = NewPKI(t)
		cert, key := m.PKI.Issue("etcd-server")
		m.rootCert, m.rootKey = m.PKI.Issue("root")
		m.extra = append([]string{"--cert-file", cert, "--key-file", key, "--trusted-ca-file", m.PKI.CACert, "--client-cert-auth"}, m.extra...)
		scheme = "https://"
	}
	var peers []string
	for i := range n {
		p := &process{name: fmt.Sprintf("m%d", i), client: scheme + FreeAddr(t), peer: "http://" + FreeAddr(t), data: t.TempDir()}
		m.members = append(m.members, p)
		peers = append(peers, p.name+"="+p.peer)
	}
	m.cluster = strings.Join(peers, ",")
	for _, p := range m.members {
		m.start(p, "new")
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

func (m *Members) start(p *process, state string) {
	p.stderr = &bytes.Buffer{}
	p.cmd = exec.Command(m.bin, append([]string{
		"--name", p.name, "--data-dir", p.data,
		"--listen-client-urls", p.client, "--advertise-client-urls", p.client,
		"--listen-peer-urls", p.peer, "--initial-advertise-peer-urls", p.peer,
		"--initial-cluster", m.cluster, "--initial-cluster-state", state,
		"--log-level", "error",
	}, m.extra...)...)
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
		if p.cmd == nil {
			continue
		}
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		p.cmd = nil
	}
}

// Restart starts killed members again with their data.
func (m *Members) Restart(members ...int) {
	for _, i := range members {
		m.start(m.members[i], "existing")
	}
}

// Leader returns the index of the member that leads the cluster.
func (m *Members) Leader() int {
	m.t.Helper()
	out, err := m.Etcdctl("endpoint", "status", "-w", "json")
	if err != nil {
		m.t.Fatalf("endpoint status: %v: %s", err, out)
	}
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		m.t.Fatalf("endpoint status: %v: %s", err, out)
	}
	for _, s := range st {
		if s.Status.Header.MemberID != s.Status.Leader {
			continue
		}
		for i, p := range m.members {
			if p.client == s.Endpoint {
				return i
			}
		}
	}
	m.t.Fatalf("no leader in %s", out)
	return -1
}

// Replace wipes member i as a lost disk would: it is removed from the
// cluster, its data deleted, and it joins again as a new member with the
// same name and URLs (the runbook of etcd's "replace a failed member").
func (m *Members) Replace(i int) {
	m.t.Helper()
	p := m.members[i]
	m.Kill(i)
	out, err := m.Etcdctl("member", "list", "-w", "json")
	if err != nil {
		m.t.Fatalf("member list: %v: %s", err, out)
	}
	var list struct {
		Members []struct {
			ID   uint64 `json:"ID"`
			Name string `json:"name"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		m.t.Fatalf("member list: %v: %s", err, out)
	}
	for _, mem := range list.Members {
		if mem.Name == p.name {
			if out, err := m.Etcdctl("member", "remove", fmt.Sprintf("%x", mem.ID)); err != nil {
				m.t.Fatalf("member remove: %v: %s", err, out)
			}
		}
	}
	// etcd refuses a member while the others are not connected for 5 s
	// ("unhealthy cluster"): an operator tries again.
	for deadline := time.Now().Add(60 * time.Second); ; {
		out, err := m.Etcdctl("member", "add", p.name, "--peer-urls", p.peer)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("member add: %v: %s", err, out)
		}
		time.Sleep(time.Second)
	}
	if err := os.RemoveAll(p.data); err != nil {
		m.t.Fatal(err)
	}
	p.data = m.t.TempDir()
	m.start(p, "existing")
}

// ClientTLS returns the CA, certificate and key files a client presents as
// user cn (empty on a plain cluster).
func (m *Members) ClientTLS(cn string) (ca, cert, key string) {
	if m.PKI == nil {
		return "", "", ""
	}
	cert, key = m.PKI.Issue(cn)
	return m.PKI.CACert, cert, key
}

// Etcdctl runs etcdctl against every member as root (with root's
// certificate and password where the cluster has them) and returns its
// combined output.
func (m *Members) Etcdctl(args ...string) (string, error) {
	base := []string{"--endpoints", strings.Join(m.liveEndpoints(), ","), "--command-timeout", "10s"}
	if m.PKI != nil {
		base = append(base, "--cacert", m.PKI.CACert, "--cert", m.rootCert, "--key", m.rootKey)
	}
	if m.rootAuth != "" {
		base = append(base, "--user", m.rootAuth)
	}
	cmd := exec.Command("etcdctl", append(base, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// liveEndpoints are the client URLs of the members that run.
func (m *Members) liveEndpoints() []string {
	var out []string
	for _, p := range m.members {
		if p.cmd != nil {
			out = append(out, p.client)
		}
	}
	return out
}

// EnableAuth creates the root user with password and turns etcd auth on.
func (m *Members) EnableAuth(password string) {
	m.t.Helper()
	enableAuth(m.t, m.Etcdctl, password)
	m.rootAuth = "root:" + password
}

// WaitHealthy waits until every member answers etcdctl endpoint health.
func (m *Members) WaitHealthy(timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := m.Etcdctl("endpoint", "health", "--cluster=false")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("etcd members not healthy within %s: %s", timeout, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
