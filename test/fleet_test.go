package test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// security is how a fleet's agents authenticate to etcd.
type security int

const (
	plainEtcd    security = iota // no TLS, no auth
	certAuth                     // TLS; etcd auth by client certificate (CN = user)
	passwordAuth                 // etcd auth by password, with short-lived tokens
)

func (s security) String() string {
	return [...]string{"plain", "client certificates", "password"}[s]
}

// authTokenTTL is the server's --auth-token-ttl in password fleets: its
// simple tokens expire during any outage of the tests.
const authTokenTTL = "2"

// fleet is three ccm agents, run as processes the way systemd runs them,
// on Debian's etcd as three members.
type fleet struct {
	t      *testing.T
	m      *etcdtest.Members
	admin  *clientv3.Client // root
	cli    *node            // the ccm CLI as root
	agents []*supervised
	ran    string // the action handler's log: one request ID per run
}

// supervised is an agent process restarted when it exits, as systemd's
// Restart=always does.
type supervised struct {
	t       *testing.T
	n       *node
	name    string
	metrics string // --metrics-addr
	log     string // its stderr, across restarts
	args    []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	restarts int
	exits    []string
	stopping bool
	done     chan struct{}
}

// startFleet starts the members, the roles for sec and three agents.
func startFleet(t *testing.T, sec security, agentArgs ...string) *fleet {
	t.Helper()
	opts := etcdtest.MembersOptions{TLS: sec == certAuth}
	if sec == passwordAuth {
		opts.Extra = []string{"--auth-token-ttl", authTokenTTL}
	}
	m := etcdtest.StartMembersWith(t, 3, opts)
	// Five fleets start side by side in make test: on two busy cores a
	// member's first proposals can take a while.
	m.WaitHealthy(90 * time.Second)
	f := &fleet{t: t, m: m, ran: filepath.Join(t.TempDir(), "ran.log")}
	dir := actionConfig(t, map[string]string{"record": "command: [BIN/record]\nrun_as: {user: ME}\n"},
		map[string]string{"record": fmt.Sprintf("echo \"$CCM_ACTION_ID@$CCM_NODE\" >> %q\n", f.ran)})
	rootCfg := cluster.ClientConfig{Endpoints: m.Endpoints(), DialTimeout: 10 * time.Second}
	admin := newNode(t, "", dir, m.Endpoints())
	if sec != plainEtcd {
		m.EnableAuth("root-secret")
		rootCfg.User, rootCfg.Password = "root", "root-secret"
		admin.flags = []string{"--user", "root"}
		admin.env = []string{"CCM_PASSWORD=root-secret"}
	}
	if sec == certAuth {
		ca, cert, key := m.ClientTLS("root")
		rootCfg.CACert, rootCfg.Cert, rootCfg.Key = ca, cert, key
		admin.flags = append(admin.flags, "--cacert", ca, "--cert", cert, "--key", key)
	}
	f.cli = admin
	var err error
	f.admin, err = cluster.NewClient(rootCfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.admin.Close() })
	for i := range 3 {
		name := fmt.Sprintf("node%d", i)
		n := newNode(t, name, dir, m.Endpoints())
		switch sec {
		case passwordAuth:
			grantRole(t, m, admin, name+"-secret", "--node", name)
			n.flags = []string{"--user", "ccm-node-" + name}
			n.env = []string{"CCM_PASSWORD=" + name + "-secret"}
		case certAuth:
			grantRole(t, m, admin, name+"-secret", "--node", name)
			ca, cert, key := m.ClientTLS("ccm-node-" + name)
			n.flags = []string{"--cacert", ca, "--cert", cert, "--key", key}
		}
		s := &supervised{t: t, n: n, name: name, metrics: freeAddr(t), log: filepath.Join(t.TempDir(), name+".log"),
			args: append([]string{"agent", "--debounce", "0s", "--lock-ttl", "2s", "--log-level", "info"}, agentArgs...)}
		s.supervise()
		f.agents = append(f.agents, s)
	}
	return f
}

// supervise starts the agent, and starts it again a second after it
// exits, until the test ends.
func (s *supervised) supervise() {
	s.done = make(chan struct{})
	s.start()
	go func() {
		defer close(s.done)
		for {
			s.mu.Lock()
			cmd := s.cmd
			s.mu.Unlock()
			err := cmd.Wait()
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			s.restarts++
			s.exits = append(s.exits, fmt.Sprint(err))
			s.mu.Unlock()
			time.Sleep(time.Second) // RestartSec=1
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			s.start()
			s.mu.Unlock()
		}
	}()
	s.t.Cleanup(func() {
		s.mu.Lock()
		s.stopping = true
		if s.cmd.Process != nil {
			_ = s.cmd.Process.Signal(syscall.SIGCONT)
			_ = s.cmd.Process.Kill()
		}
		s.mu.Unlock()
		<-s.done
	})
}

// start runs the agent process; s.mu is held or the loop is not running.
func (s *supervised) start() {
	n := s.n
	base := []string{
		"--endpoints", strings.Join(n.endpoints, ","), "--node", n.name, "--root", n.root,
		"--state-dir", n.state, "--config-dir", n.configDir, "--log-format", "json",
		"--metrics-addr", s.metrics,
	}
	cmd := exec.Command(ccmBin, append(append(base, n.flags...), s.args...)...)
	cmd.Env = append(os.Environ(), n.env...)
	out, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(s.t, err)
	defer out.Close()
	cmd.Stderr = out
	require.NoError(s.t, cmd.Start())
	s.cmd = cmd
}

// signal sends sig to the agent process.
func (s *supervised) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NoError(s.t, s.cmd.Process.Signal(sig))
}

// restarted is how many times the agent exited and was started again, and
// why it exited.
func (s *supervised) restarted() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts, append([]string(nil), s.exits...)
}

// logLines is how many lines the agent wrote to stderr so far.
func (s *supervised) logLines() int {
	f, err := os.Open(s.log)
	if err != nil {
		return 0
	}
	defer f.Close()
	lines := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines++
	}
	return lines
}

// tail is the last lines of the agent's stderr, for a failure message.
func (s *supervised) tail(n int) string {
	b, _ := os.ReadFile(s.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// health is the agent's /healthz answer: its HTTP status and body (0 when
// it does not answer).
func (s *supervised) health() (int, string) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + s.metrics + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String()
}

// put writes a site object, retrying while etcd elects a leader as the
// cluster API would, and returns its revision.
func (f *fleet) put(v string) int64 {
	f.t.Helper()
	return putOn(f.t, f.admin, 1, v)
}

// converged waits until every agent reports a converged run of at least
// rev, and fails with their logs when one does not within timeout.
func (f *fleet) converged(rev int64, timeout time.Duration) {
	f.t.Helper()
	c := cluster.New(f.admin, cluster.Options{})
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := c.View(ctx)
		cancel()
		done := 0
		if err == nil {
			for _, n := range v.Nodes {
				if n.Status != nil && n.Status.Result == api.ResultConverged && n.Status.Revision >= rev {
					done++
				}
			}
		}
		if done == len(f.agents) {
			return
		}
		if time.Now().After(deadline) {
			var why strings.Builder
			for _, a := range f.agents {
				r, exits := a.restarted()
				fmt.Fprintf(&why, "--- %s (restarts %d: %v)\n%s\n", a.name, r, exits, a.tail(15))
			}
			f.t.Fatalf("not every agent converged revision %d within %s (view: %+v, err %v)\n%s", rev, timeout, v, err, why.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// call runs the record action on every node and waits for the replies.
func (f *fleet) call() {
	f.t.Helper()
	var nodes []string
	for _, a := range f.agents {
		nodes = append(nodes, a.name)
	}
	// An engine's follower may be in its backoff (up to 15 s) after a
	// fault: the claim is that the next action is answered, not when.
	replies, errs := callReplies(f.t, f.admin, client.Call{Action: "record", To: client.Targets{Nodes: nodes}, Timing: client.Timing{PickupTimeout: time.Minute}})
	require.Empty(f.t, errs)
	require.Len(f.t, replies, len(nodes))
}

// ranOnce fails the test when the handler ran twice for one request.
func (f *fleet) ranOnce() int {
	f.t.Helper()
	b, err := os.ReadFile(f.ran)
	if os.IsNotExist(err) {
		return 0
	}
	require.NoError(f.t, err)
	seen := map[string]bool{}
	for _, id := range strings.Fields(string(b)) {
		require.False(f.t, seen[id], "action %s ran twice", id)
		seen[id] = true
	}
	return len(seen)
}
