package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// actionConfig writes a configuration directory with one trivial
// configuration and a handler file per entry of handlers (name to the
// YAML after "name:"), and returns it. Scripts get absolute paths under
// the directory's bin/.
func actionConfig(t *testing.T, handlers map[string]string, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(`subscribes: [sites]
files:
  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: "{{ .Object.Data.v }}\n"}
`), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "actions"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	for name, body := range scripts {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "bin", name), []byte("#!/bin/sh\n"+body), 0o755))
	}
	me, err := user.Current()
	require.NoError(t, err)
	for name, body := range handlers {
		body = strings.ReplaceAll(body, "BIN/", filepath.Join(dir, "bin")+"/")
		body = strings.ReplaceAll(body, "ME", me.Username)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "actions", name+".yaml"), []byte("name: "+name+"\n"+body), 0o644))
	}
	return dir
}

// caller runs ccm action commands as an operator: global flags without
// --node, which ccm action run takes as a target.
func caller(t *testing.T, etcd *etcdtest.Cluster, dir string) *node {
	endpoints := []string{"127.0.0.1:1"} // offline commands
	if etcd != nil {
		endpoints = etcd.Endpoints()
	}
	return &node{t: t, name: "", root: t.TempDir(), state: stateDir(t), configDir: dir, endpoints: endpoints}
}

// action runs a ccm command as the caller.
func (n *node) action(args ...string) result {
	n.t.Helper()
	return n.run("", args...)
}

// callReplies runs a call through the Go client and returns every final
// reply (or node error) by node.
func callReplies(t *testing.T, cli *clientv3.Client, call client.Call, opts ...client.Options) (map[string]api.Reply, map[string]error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	replies, errs := map[string]api.Reply{}, map[string]error{}
	for r, err := range client.New(cli, append(opts, client.Options{})[0]).Run(ctx, call) {
		if ne := (*client.NodeError)(nil); err != nil {
			require.ErrorAs(t, err, &ne)
			errs[ne.Node] = ne.Err
			continue
		}
		replies[r.Node] = r
	}
	return replies, errs
}

// replyOf reads one node's reply to a call, or nil.
func replyOf(t *testing.T, cli *clientv3.Client, id, node string) *api.Reply {
	t.Helper()
	recs, err := client.New(cli, client.Options{}).Get(context.Background(), id)
	require.NoError(t, err)
	for _, r := range recs {
		if r.Node == node {
			return r.Reply
		}
	}
	return nil
}

const echoHandler = `command: [BIN/echo-params, should-stay-alone]
params:
  site: {pattern: '[a-z0-9-]{1,64}', required: true}
  note: {}
run_as: {user: ME}
timeout: 10s
`

// echo-params prints its argv, its stdin and its CCM_ environment as JSON
// (CCM_PARAM_NOTE, which may hold anything, goes to a file of its own
// when NOTE_FILE is set at the top).
const echoScript = `in=$(cat)
[ -n "$NOTE_FILE" ] && printf '%s' "$CCM_PARAM_NOTE" > "$NOTE_FILE"
printf '{"argv": "%s", "stdin": %s, "site": "%s", "config": "%s", "node": "%s", "home": "%s", "leaked": "%s"}\n' \
  "$*" "$in" "$CCM_PARAM_SITE" "$CCM_CONFIG" "$CCM_NODE" "$HOME" "$CCM_PASSWORD$GOPATH"
`

func TestActionGetsItsParametersOnStdinAndInTheEnvironmentNeverInArgv(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	noteFile := filepath.Join(t.TempDir(), "note")
	dir := actionConfig(t, map[string]string{"echo": echoHandler}, map[string]string{"echo-params": "NOTE_FILE=" + noteFile + "\n" + echoScript})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)

	note := `a "quoted" $(touch /tmp/pwned); rm -rf / ; value`
	replies, errs := callReplies(t, n.cli, client.Call{Action: "echo", To: client.Targets{Nodes: []string{"web1"}}, Params: map[string]string{"site": "shop-1", "note": note}})
	require.Empty(t, errs)
	r := replies["web1"]
	require.Equal(t, api.StateSucceeded, r.State, r.Error)
	require.NotNil(t, r.ExitCode)
	assert.Equal(t, 0, *r.ExitCode)
	var out struct {
		Argv, Site, Config, Node, Home, Leaked string
		Stdin                                  map[string]string
	}
	require.NoError(t, json.Unmarshal(r.Output, &out), "a JSON document stays JSON: %s", r.Output)
	assert.Equal(t, "should-stay-alone", out.Argv, "parameters never reach argv")
	assert.Equal(t, map[string]string{"site": "shop-1", "note": note}, out.Stdin)
	assert.Equal(t, "shop-1", out.Site)
	b, err := os.ReadFile(noteFile)
	require.NoError(t, err)
	assert.Equal(t, note, string(b), "CCM_PARAM_NOTE")
	assert.Equal(t, "echo", out.Config)
	assert.Equal(t, "web1", out.Node)
	assert.Empty(t, out.Leaked, "a clean environment: nothing of the agent's")
	assert.NoFileExists(t, "/tmp/pwned")
	// The metric follows the reply: wait for it, as for any reported state.
	eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(n.ag.Metrics().Actions.WithLabelValues("echo", api.StateSucceeded)) == 1
	}, "ccm_actions_total{action=echo,state=succeeded} is 1")

	// The CLI prints the table, and exits 0.
	// What it prints can be copied: & < > as they are, in the table and
	// in --json (Go's encoder writes them as \u0026 and so on).
	res := caller(t, etcd, dir).action("action", "run", "echo", "--node", "web1", "--param", "site=shop-2", "--param", "note=a,b https://x/login?a=1&b=<2>")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "NODE")
	assert.Regexp(t, `web1\s+succeeded\s+0\s+`, res.stdout)
	assert.Contains(t, res.stdout, `https://x/login?a=1&b=<2>`)
	assert.NotContains(t, res.stdout, `\u00`)
	b, err = os.ReadFile(noteFile)
	require.NoError(t, err)
	assert.Equal(t, "a,b https://x/login?a=1&b=<2>", string(b), "a comma stays in the value")
	res = caller(t, etcd, dir).action("action", "run", "echo", "--node", "web1", "--param", "site=shop-2", "--param", "note=?a=1&b=2", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, `?a=1&b=2`)
	assert.NotContains(t, res.stdout, `\u0026`)
}

func TestActionFansOutByLabelAndReportsANamedNodeThatIsNotAlive(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, map[string]string{"echo": echoHandler}, map[string]string{"echo-params": echoScript})
	for _, name := range []string{"web1", "web2", "web3"} {
		startAgent(t, etcd, name, dir, agentConfig{labels: map[string]string{"role": "web"}})
	}
	// db1 claims role=web itself (item 11 of the trust review: labels
	// were self-asserted, so a node could draw calls meant for others).
	db := startAgent(t, etcd, "db1", dir, agentConfig{labels: map[string]string{"role": "web"}})
	c := cluster.New(db.cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool {
		alive, err := c.Alive(context.Background())
		return err == nil && len(alive) == 4
	}, "four agents alive")
	op := caller(t, etcd, dir)
	res := op.action("action", "run", "echo", "--label", "role=web", "--param", "site=x")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "no node to call", "no operator labelled a node yet")
	for _, name := range []string{"web1", "web2", "web3"} {
		res = op.action("node", "label", name, "role=web", "dc=ams")
		require.Equal(t, 0, res.code, res.stderr)
	}
	res = op.action("node", "label", "db1", "role=db")
	require.Equal(t, 0, res.code, res.stderr)
	res = op.action("node", "label", "web3", "dc-")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Equal(t, "role=web\n", res.stdout, "what remains is printed")

	res = caller(t, etcd, dir).action("action", "run", "echo", "--label", "role=web", "--node", "web9", "--param", "site=x")
	assert.Equal(t, 1, res.code, "a node without a reply fails the call\n%s%s", res.stdout, res.stderr)
	for _, name := range []string{"web1", "web2", "web3"} {
		assert.Regexp(t, name+`\s+succeeded\s+0`, res.stdout)
	}
	assert.Regexp(t, `web9\s+not_alive\s+-\s+-\s+no agent alive`, res.stdout)
	assert.NotContains(t, res.stdout, "db1", "the operator's label selects the web nodes only, whatever db1 claims")

	// --json: one reply per line.
	res = caller(t, etcd, dir).action("action", "run", "echo", "--all", "--param", "site=x", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	assert.Len(t, lines, 4)
	for _, l := range lines {
		var r api.Reply
		require.NoError(t, json.Unmarshal([]byte(l), &r))
		assert.Equal(t, api.StateSucceeded, r.State)
	}
}

func TestActionRejectsBadRequestsBeforeAnythingRuns(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	ran := filepath.Join(t.TempDir(), "ran")
	dir := actionConfig(t, map[string]string{"echo": echoHandler, "touch": "command: [BIN/touch]\nrun_as: {user: ME}\n"},
		map[string]string{"echo-params": echoScript, "touch": "echo >> " + ran + "\n"})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)

	cases := []struct {
		name string
		call client.Call
		want []string
	}{
		{"unknown action", client.Call{Action: "nope"}, []string{`unknown action "nope"`, "ccm.converge, ccm.plan, echo, touch"}},
		{"pattern", client.Call{Action: "echo", Params: map[string]string{"site": "../../etc"}}, []string{"parameter site: does not match"}},
		{"undeclared and missing", client.Call{Action: "echo", Params: map[string]string{"evil": "1"}}, []string{`parameter "evil" is not declared`, "parameter site is required"}},
		{"undeclared", client.Call{Action: "touch", Params: map[string]string{"x": "1"}}, []string{`parameter "x" is not declared`}},
		{"deadline", client.Call{Action: "touch", Timing: client.Timing{Deadline: time.Now().Add(-time.Second)}}, []string{"deadline", "passed before the node picked it up"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.call.To.Nodes = []string{"web1"}
			replies, errs := callReplies(t, n.cli, tc.call)
			require.Empty(t, errs)
			r := replies["web1"]
			assert.Equal(t, api.StateRejected, r.State)
			for _, w := range tc.want {
				assert.Contains(t, r.Error, w)
			}
			assert.Nil(t, r.ExitCode, "nothing ran")
		})
	}
	assert.NoFileExists(t, ran, "no rejected request ran its handler")
	rejected := func() float64 {
		m := n.ag.Metrics().Actions
		return testutil.ToFloat64(m.WithLabelValues("touch", api.StateRejected)) +
			testutil.ToFloat64(m.WithLabelValues("echo", api.StateRejected)) +
			testutil.ToFloat64(m.WithLabelValues("nope", api.StateRejected))
	}
	eventually(t, 10*time.Second, func() bool { return rejected() == 5 }, "five rejections counted (%v)", rejected())
}

// alive reports whether a process exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func readPids(t *testing.T, file string) []int {
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		var p int
		_, err := fmt.Sscan(f, &p)
		require.NoError(t, err)
		pids = append(pids, p)
	}
	return pids
}

func TestActionTimeoutKillsTheWholeProcessGroup(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	pids := filepath.Join(t.TempDir(), "pids")
	dir := actionConfig(t, map[string]string{"hang": "command: [BIN/hang]\nrun_as: {user: ME}\ntimeout: 3s\n"},
		map[string]string{"hang": fmt.Sprintf("sleep 300 &\necho $! $$ > %s\nwait\n", pids)})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)

	// ccm_actions_running shows the action while it runs (it runs for its
	// whole timeout of 3 s), and ccm_action_duration_seconds observes it.
	m := n.ag.Metrics()
	var sawRunning atomic.Bool
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !sawRunning.Load(); time.Sleep(5 * time.Millisecond) {
			sawRunning.Store(testutil.ToFloat64(m.ActionsRunning) == 1)
		}
	}()
	start := time.Now()
	replies, _ := callReplies(t, n.cli, client.Call{Action: "hang", To: client.Targets{Nodes: []string{"web1"}}})
	<-watching
	assert.True(t, sawRunning.Load(), "ccm_actions_running was 1 while the action ran")
	eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(m.ActionsRunning) == 0 }, "ccm_actions_running back to 0")
	assert.Equal(t, 1, testutil.CollectAndCount(m.ActionDuration), "ccm_action_duration_seconds observed the action")
	r := replies["web1"]
	assert.Equal(t, api.StateTimedOut, r.State)
	assert.Contains(t, r.Error, "killed with its process group after the timeout of 3s")
	assert.Less(t, time.Since(start), 30*time.Second)
	for _, pid := range readPids(t, pids) {
		eventually(t, 10*time.Second, func() bool { return !alive(pid) }, "process %d of the group is killed", pid)
	}
}

func TestAgentKilledMidActionReportsInterruptedAndNeverRunsItAgain(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	state := t.TempDir()
	runs, pids := filepath.Join(state, "runs"), filepath.Join(state, "pids")
	dir := actionConfig(t, map[string]string{
		"slow":  "command: [BIN/slow]\nrun_as: {user: ME}\ntimeout: 5m\n",
		"quick": "command: [/bin/true]\nrun_as: {user: ME}\n",
	}, map[string]string{"slow": fmt.Sprintf("echo ran >> %s\necho $$ > %s\nexec sleep 300\n", runs, pids)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	agentProc := n.start("agent", "--debounce", "0s")
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	sent, err := client.New(cli, client.Options{}).Send(context.Background(), client.Call{Action: "slow", To: client.Targets{Nodes: []string{"web1"}}})
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool {
		r := replyOf(t, cli, sent.ID, "web1")
		return r != nil && r.State == api.StateRunning
	}, "the node reports the action running")
	eventually(t, 10*time.Second, func() bool { _, err := os.Stat(pids); return err == nil }, "the handler started")
	handler := readPids(t, pids)[0]

	require.NoError(t, agentProc.Process.Signal(syscall.SIGKILL))
	_, _ = agentProc.Process.Wait()
	eventually(t, 10*time.Second, func() bool { return !alive(handler) }, "the handler dies with its agent")

	// The lease of the killed agent keeps its alive key for the TTL;
	// the new agent revokes it from its lease file and starts at once.
	n.start("agent", "--debounce", "0s")
	eventually(t, 30*time.Second, func() bool {
		r := replyOf(t, cli, sent.ID, "web1")
		return r != nil && r.State == api.StateInterrupted
	}, "the request is reported interrupted at the next start")
	// A later request is answered: the restarted engine went through its
	// queue, and the interrupted one was not run again.
	replies, errs := callReplies(t, cli, client.Call{Action: "quick", To: client.Targets{Nodes: []string{"web1"}}})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State)
	b, err := os.ReadFile(runs)
	require.NoError(t, err)
	assert.Equal(t, "ran\n", string(b), "the handler ran exactly once")
}

func TestARequestWrittenWhileTheNodeIsDownRunsWhenItReturns(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	ran := filepath.Join(t.TempDir(), "ran")
	dir := actionConfig(t, map[string]string{"touch": "command: [BIN/touch]\nrun_as: {user: ME}\n"}, map[string]string{"touch": "echo ran >> " + ran + "\n"})
	cli := etcd.Client(t)
	res := caller(t, etcd, dir).action("action", "run", "touch", "--node", "web1")
	assert.Equal(t, 1, res.code)
	assert.Regexp(t, `web1\s+not_alive`, res.stdout)
	recs, err := client.New(cli, client.Options{}).List(context.Background(), "web1", 0)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Nil(t, recs[0].Reply, "not picked up while the node is down")

	startAgent(t, etcd, "web1", dir, agentConfig{})
	eventually(t, 20*time.Second, func() bool {
		r := replyOf(t, cli, recs[0].Request.ID, "web1")
		return r != nil && r.State == api.StateSucceeded
	}, "the request runs once the node is back")
	b, err := os.ReadFile(ran)
	require.NoError(t, err)
	assert.Equal(t, "ran\n", string(b))
}

// loggingScript logs "<key> start|end <ns>" around a sleep, with the node
// and the request id as the key, and exits with code.
func loggingScript(log, sleep string, code int) string {
	return fmt.Sprintf(`echo "$CCM_NODE/$CCM_ACTION_ID start $(date +%%s%%N)" >> %s
sleep %s
echo "$CCM_NODE/$CCM_ACTION_ID end $(date +%%s%%N)" >> %s
exit %d
`, log, sleep, log, code)
}

// maxOverlap is the most intervals running at one instant.
func maxOverlap(in []interval) int {
	most := 0
	for _, a := range in {
		n := 0
		for _, b := range in {
			if b.start <= a.start && a.start < b.end {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

func TestBatchOneNeverOverlapsAndMaxFailuresStopsSending(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log, failLog := filepath.Join(t.TempDir(), "log"), filepath.Join(t.TempDir(), "fail")
	dir := actionConfig(t, map[string]string{
		"work": "command: [BIN/work]\nrun_as: {user: ME}\n",
		"fail": "command: [BIN/fail]\nrun_as: {user: ME}\n",
	}, map[string]string{"work": loggingScript(log, "0.2", 0), "fail": loggingScript(failLog, "0", 3)})
	var cli *clientv3.Client
	for _, name := range []string{"web1", "web2", "web3", "web4"} {
		cli = startAgent(t, etcd, name, dir, agentConfig{}).cli
	}
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { a, err := c.Alive(context.Background()); return err == nil && len(a) == 4 }, "four agents alive")

	res := caller(t, etcd, dir).action("action", "run", "work", "--all", "--batch", "1")
	require.Equal(t, 0, res.code, res.stdout+res.stderr)
	in := intervals(t, log)
	require.Len(t, in, 4)
	assert.Equal(t, 1, maxOverlap(in), "--batch 1: one node at a time: %v", in)

	res = caller(t, etcd, dir).action("action", "run", "fail", "--all", "--batch", "1", "--max-failures", "2")
	assert.Equal(t, 1, res.code)
	assert.Equal(t, 2, strings.Count(res.stdout, " failed "), res.stdout)
	assert.Equal(t, 2, strings.Count(res.stdout, "not_sent"), res.stdout)
	assert.Len(t, intervals(t, failLog), 2, "nothing is sent after the second failure")
	assert.Contains(t, res.stdout, "exit status 3")
}

func TestConcurrencyBoundsTheHandlersRunningAtOnce(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "log")
	dir := actionConfig(t, map[string]string{"work": "command: [BIN/work]\nrun_as: {user: ME}\nconcurrency: 2\n"},
		map[string]string{"work": loggingScript(log, "0.5", 0)})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	cl := client.New(n.cli, client.Options{})
	var ids []string
	for range 6 {
		s, err := cl.Send(context.Background(), client.Call{Action: "work", To: client.Targets{Nodes: []string{"web1"}}})
		require.NoError(t, err)
		ids = append(ids, s.ID)
	}
	for _, id := range ids {
		eventually(t, 30*time.Second, func() bool {
			r := replyOf(t, n.cli, id, "web1")
			return r != nil && r.State == api.StateSucceeded
		}, "request %s succeeds", id)
	}
	in := intervals(t, log)
	require.Len(t, in, 6)
	assert.Equal(t, 2, maxOverlap(in), "concurrency 2: two at once, never more: %v", in)
}

func TestRequestsAndRepliesLiveOnTheRetentionLease(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, map[string]string{"quick": "command: [/bin/true]\nrun_as: {user: ME}\n"}, nil)
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	res := caller(t, etcd, dir).action("action", "run", "quick", "--node", "web1", "--retention", "1h", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	var r api.Reply
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &r))

	keys := api.NewKeys("")
	ctx := context.Background()
	req, err := n.cli.Get(ctx, keys.ActionKey("web1", r.ID))
	require.NoError(t, err)
	reply, err := n.cli.Get(ctx, keys.ReplyKey("web1", r.ID))
	require.NoError(t, err)
	require.Len(t, req.Kvs, 1)
	require.Len(t, reply.Kvs, 1)
	lease := clientv3.LeaseID(req.Kvs[0].Lease)
	require.NotZero(t, lease, "the request is on a lease")
	ttl, err := n.cli.TimeToLive(ctx, lease)
	require.NoError(t, err)
	assert.InDelta(t, time.Hour.Seconds(), float64(ttl.GrantedTTL), 1)
	// The final reply is on the node's own lease (a node may not join the
	// caller's), which keeps it at least the agent's retention from now:
	// the lease is shared for a twenty-fourth of the retention.
	replyLease := clientv3.LeaseID(reply.Kvs[0].Lease)
	require.NotZero(t, replyLease, "the reply is on a lease")
	ttl, err = n.cli.TimeToLive(ctx, replyLease)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, ttl.TTL, int64(api.DefaultRetention.Seconds()))
	assert.LessOrEqual(t, ttl.GrantedTTL, int64((api.DefaultRetention+api.DefaultRetention/24).Seconds())+1)

	// When the leases end, both go: etcd does not grow with the calls.
	_, err = n.cli.Revoke(ctx, lease)
	require.NoError(t, err)
	_, err = n.cli.Revoke(ctx, replyLease)
	require.NoError(t, err)
	reply, err = n.cli.Get(ctx, keys.ReplyKey("web1", r.ID))
	require.NoError(t, err)
	assert.Empty(t, reply.Kvs)
	recs, err := client.New(n.cli, client.Options{}).Get(ctx, r.ID)
	require.NoError(t, err)
	assert.Empty(t, recs)
	res = caller(t, etcd, dir).action("action", "get", r.ID)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "no request with id")

	// The node replaces a lease revoked under it: the next call answers.
	replies, errs := callReplies(t, n.cli, client.Call{Action: "quick", To: client.Targets{Nodes: []string{"web1"}}})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State)
}

func TestBuiltinPlanAndConvergeOnEveryNode(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, nil, nil)
	var nodes []*agentNode
	for _, name := range []string{"web1", "web2"} {
		nodes = append(nodes, startAgent(t, etcd, name, dir, agentConfig{debounce: time.Hour, maxWait: time.Hour}))
	}
	for _, n := range nodes {
		n.reported(t, 1, api.ResultConverged)
	}
	res := caller(t, etcd, dir).action("plan", "--cluster", "--color", "never")
	assert.Equal(t, 0, res.code, res.stdout+res.stderr)
	assert.Equal(t, 2, strings.Count(res.stdout, "No changes"), res.stdout)

	// A change the agents hold back (an hour's debounce) shows in every
	// node's plan, and nothing is applied.
	rev := putSites(t, etcd, 1, "v2")
	res = caller(t, etcd, dir).action("plan", "--cluster", "--color", "never")
	assert.Equal(t, 2, res.code, res.stdout+res.stderr)
	for _, name := range []string{"web1", "web2"} {
		assert.Contains(t, res.stdout, "# node "+name)
	}
	assert.Equal(t, 2, strings.Count(res.stdout, "+v2"), res.stdout)
	assert.Empty(t, nodes[0].read("/sites/s000.conf"), "ccm.plan applies nothing")

	// ccm.converge runs now, through the lock, and replies with the status.
	res = caller(t, etcd, dir).action("action", "run", "ccm.converge", "--node", "web1", "--json")
	require.Equal(t, 0, res.code, res.stdout+res.stderr)
	var r api.Reply
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &r))
	var st api.Status
	require.NoError(t, json.Unmarshal(r.Output, &st))
	assert.Equal(t, api.ResultConverged, st.Result)
	assert.GreaterOrEqual(t, st.Revision, rev)
	assert.Equal(t, "v2\n", nodes[0].read("/sites/s000.conf"))
	nodes[0].reported(t, rev, api.ResultConverged)
	assert.Empty(t, nodes[1].read("/sites/s000.conf"), "only the node called converged")
}

func TestHandlerFilesAreCheckedWithEveryErrorNamed(t *testing.T) {
	dir := actionConfig(t, map[string]string{
		"bad": `command: [relative/path]
params:
  site: {pattern: '([', required: true}
  "bad-name": {}
  x: {secret: true, colour: red}
run_as: {param: x}
timeout: soon
concurrency: 0
`,
		"noone":    "command: [/bin/true]\n",
		"ccm.mine": "command: [/bin/true]\nrun_as: {user: ME}\n",
	}, nil)
	n := caller(t, nil, dir)
	for _, args := range [][]string{{"action", "validate"}, {"validate"}} {
		res := n.action(args...)
		assert.Equal(t, 1, res.code, res.stdout)
		bad := filepath.Join(dir, "actions", "bad.yaml")
		for _, want := range []string{
			bad + `: line 6: field colour is not a known parameter field`,
			bad + `: command: "relative/path" is neither an absolute path nor ./`,
			bad + `: params: site: pattern: error parsing regexp`,
			bad + `: params: "bad-name" is not a parameter name`,
			bad + `: timeout "soon" is not a positive duration`,
			bad + `: concurrency 0: want 1 or more`,
			bad + `: run_as: param "x" must be required: true`,
			filepath.Join(dir, "actions", "noone.yaml") + `: run_as: required`,
			filepath.Join(dir, "actions", "ccm.mine.yaml") + `: name "ccm.mine": names starting with "ccm." are ccm's built-in actions`,
		} {
			assert.Contains(t, res.stderr, want, args)
		}
	}
}

func TestSerialActionsHoldTheLockAndTheFlagStopsNoAction(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, map[string]string{"serial": "command: [/bin/sleep, '2']\nrun_as: {user: ME}\nserial: true\n"}, nil)
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	c := cluster.New(n.cli, cluster.Options{})
	ctx := context.Background()

	// The failure flag is set: convergence halts, actions do not.
	_, err := n.cli.Put(ctx, c.FailureKey("other"), `{"node":"other","configuration":"x","error":"broken"}`)
	require.NoError(t, err)

	admin := caller(t, etcd, dir)
	r := admin.action("action", "run", "serial", "--node", "web1", "--no-wait")
	require.Equal(t, 0, r.code, r.stderr)
	id := strings.TrimSpace(r.stdout)
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").State == cluster.StateRunning }, "the serial action holds the cluster lock")
	eventually(t, 20*time.Second, func() bool {
		r := replyOf(t, n.cli, id, "web1")
		return r != nil && r.State == api.StateSucceeded
	}, "it succeeds, flag or not")
	v, err := c.View(ctx)
	require.NoError(t, err)
	assert.Empty(t, v.Holders, "the lock is released")

	r = admin.action("action", "get", id)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `web1\s+succeeded\s+0`, r.stdout)
	r = admin.action("action", "list", "--node", "web1")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, id)

	// SIGHUP (Reload) picks up a new handler file.
	me, err := user.Current()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "actions", "new.yaml"), []byte("command: [/bin/true]\nrun_as: {user: "+me.Username+"}\n"), 0o644))
	require.NoError(t, n.ag.Reload())
	replies, errs := callReplies(t, n.cli, client.Call{Action: "new", To: client.Targets{Nodes: []string{"web1"}}})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State)
}
