package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// runsOf reads the ids a handler appended to its runs file, one per run.
func runsOf(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Fields(string(b))
}

// finalReplies reads the final replies of the node to the calls ids.
func finalReplies(t *testing.T, cli *clientv3.Client, node string, ids []string) map[string]*api.Reply {
	t.Helper()
	out := map[string]*api.Reply{}
	for _, id := range ids {
		if r := replyOf(t, cli, id, node); r != nil && api.Final(r.State) {
			out[id] = r
		}
	}
	return out
}

// Item 3 of the trust review: an agent SIGKILLed with 8 requests running
// and 12 waiting their turn. Before, all 20 were reported interrupted and
// the 12 that never started were lost.
func TestAKilledAgentRunsEachRequestOnceOrSaysItWasInterrupted(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	work := t.TempDir()
	runs, gate := filepath.Join(work, "runs"), filepath.Join(work, "gate")
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	dir := actionConfig(t, map[string]string{"work": "command: [BIN/work]\nrun_as: {user: ME}\nconcurrency: 8\ntimeout: 5m\n"},
		map[string]string{"work": fmt.Sprintf("echo $CCM_ACTION_ID >> %s\nwhile [ -e %s ]; do sleep 0.05; done\n", runs, gate)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	agentProc := n.start("agent", "--debounce", "0s")
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	caller0 := client.New(cli, client.Options{})
	var ids []string
	for range 20 {
		s, err := caller0.Send(context.Background(), client.Call{Action: "work", To: client.Targets{Nodes: []string{"web1"}}})
		require.NoError(t, err)
		ids = append(ids, s.ID)
	}
	eventually(t, 30*time.Second, func() bool { return len(runsOf(t, runs)) == 8 }, "8 handlers report they started")
	started := runsOf(t, runs)
	require.NoError(t, agentProc.Process.Signal(syscall.SIGKILL))
	_, _ = agentProc.Process.Wait()
	require.NoError(t, os.Remove(gate))

	n.start("agent", "--debounce", "0s")
	eventually(t, 60*time.Second, func() bool { return len(finalReplies(t, cli, "web1", ids)) == 20 }, "every request has a final reply")
	for id, r := range finalReplies(t, cli, "web1", ids) {
		if slices.Contains(started, id) {
			assert.Equal(t, api.StateInterrupted, r.State, "%s started before the kill", id)
		} else {
			assert.Equal(t, api.StateSucceeded, r.State, "%s never started before the kill: %s", id, r.Error)
		}
	}
	all := runsOf(t, runs)
	assert.Len(t, all, 20, "each request ran exactly once")
	assert.Len(t, slices.Compact(slices.Sorted(slices.Values(all))), 20, "no request ran twice")
}

// Item 4: a claim that committed but whose response was lost leaves a
// running reply by this agent's instance that it never started. Before,
// the relist skipped it (or the next start called it interrupted) and the
// request never ran.
func TestAClaimWhoseResponseWasLostStillRunsOnce(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	runs := filepath.Join(t.TempDir(), "runs")
	dir := actionConfig(t, map[string]string{"work": "command: [BIN/work]\nrun_as: {user: ME}\n"},
		map[string]string{"work": fmt.Sprintf("echo $CCM_ACTION_ID >> %s\n", runs)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	first := n.start("agent", "--debounce", "0s")
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")
	require.NoError(t, first.Process.Signal(syscall.SIGTERM))
	_, _ = first.Process.Wait()
	instance, err := os.ReadFile(filepath.Join(n.state, "instance"))
	require.NoError(t, err)

	// What etcd holds after each lost response: the request, and the
	// running reply the claim wrote. One by this instance, one by
	// another (a state directory that was replaced).
	caller0 := client.New(cli, client.Options{})
	claimed := func(instance string) string {
		s, err := caller0.Send(context.Background(), client.Call{Action: "work", To: client.Targets{Nodes: []string{"web1"}}})
		require.NoError(t, err)
		raw, _ := json.Marshal(api.Reply{ID: s.ID, Node: "web1", State: api.StateRunning, Instance: instance, Started: time.Now()})
		_, err = cli.Put(context.Background(), api.NewKeys("").ReplyKey("web1", s.ID), string(raw))
		require.NoError(t, err)
		return s.ID
	}
	ours, theirs := claimed(strings.TrimSpace(string(instance))), claimed("another-instance")

	n.start("agent", "--debounce", "0s")
	eventually(t, 30*time.Second, func() bool { return len(finalReplies(t, cli, "web1", []string{ours, theirs})) == 2 }, "both requests settled")
	got := finalReplies(t, cli, "web1", []string{ours, theirs})
	assert.Equal(t, api.StateSucceeded, got[ours].State, "its own claim, never started: it runs")
	assert.Equal(t, api.StateInterrupted, got[theirs].State, "another instance's claim may have run: it is never run again")
	assert.Contains(t, got[theirs].Error, "may have run")
	assert.Equal(t, []string{ours}, runsOf(t, runs))
}

// Items 1 and 2: a request runs at most once whatever etcd holds. An
// action that outlives the retention keeps its reply (before, the final
// reply was silently not written). Then its reply is gone (expired, or
// its lease revoked) and the same bytes are put again: the node's own
// journal refuses them (before, they ran again).
func TestARequestReplayedAfterItsReplyIsGoneNeverRunsAgain(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	runs := filepath.Join(t.TempDir(), "runs")
	dir := actionConfig(t, map[string]string{"work": "command: [BIN/work]\nparams: {sleep: {pattern: '[0-9]'}}\nrun_as: {user: ME}\n"},
		map[string]string{"work": fmt.Sprintf("echo $CCM_ACTION_ID >> %s\nsleep ${CCM_PARAM_SLEEP:-0}\n", runs)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	n.start("agent", "--debounce", "0s", "--retention", "2s") // shorter than the action
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	replies, errs := callReplies(t, cli, client.Call{Action: "work", To: client.Targets{Nodes: []string{"web1"}}, Params: map[string]string{"sleep": "4"}})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State, "an action longer than the retention keeps its reply")
	id := replies["web1"].ID

	keys := api.NewKeys("")
	ctx := context.Background()
	req, err := cli.Get(ctx, keys.ActionKey("web1", id))
	require.NoError(t, err)
	require.Len(t, req.Kvs, 1)
	same := string(req.Kvs[0].Value)
	_, err = cli.Delete(ctx, keys.ReplyKey("web1", id))
	require.NoError(t, err)
	_, err = cli.Delete(ctx, keys.ActionKey("web1", id))
	require.NoError(t, err)
	_, err = cli.Put(ctx, keys.ActionKey("web1", id), same)
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool { r := replyOf(t, cli, id, "web1"); return r != nil && api.Final(r.State) }, "the replay is answered")
	r := replyOf(t, cli, id, "web1")
	assert.Equal(t, api.StateRejected, r.State)
	assert.Contains(t, r.Error, "already ran on this node")
	assert.Equal(t, []string{id}, runsOf(t, runs), "the handler ran once")
}

// Item 14: requests that wedged the engine before (a 450 KB key sorting
// first, whose rejection could not be written; 12,000 undeclared
// parameters) are set aside cheaply, and the next call is answered.
func TestMalformedAndOversizedRequestsNeverWedgeTheEngine(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, map[string]string{"quick": "command: [/bin/true]\nrun_as: {user: ME}\n"}, nil)
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	keys := api.NewKeys("")
	ctx := context.Background()
	huge := keys.ActionsPrefix("web1") + strings.Repeat("0", 450<<10)
	_, err := n.cli.Put(ctx, huge, `{"id":"x","action":"quick"}`)
	require.NoError(t, err)
	params := map[string]string{}
	for i := range 12000 {
		params[fmt.Sprintf("p%05d", i)] = "x"
	}
	id := api.NewID(time.Now())
	raw, _ := json.Marshal(api.Request{ID: id, Action: "quick", Params: params, Created: time.Now()})
	_, err = n.cli.Put(ctx, keys.ActionKey("web1", id), string(raw))
	require.NoError(t, err)

	replies, errs := callReplies(t, n.cli, client.Call{Action: "quick", To: client.Targets{Nodes: []string{"web1"}}})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State)
	eventually(t, 20*time.Second, func() bool { r := replyOf(t, n.cli, id, "web1"); return r != nil && api.Final(r.State) }, "the 12,000 parameters are answered")
	r := replyOf(t, n.cli, id, "web1")
	assert.Equal(t, api.StateRejected, r.State)
	assert.Less(t, len(r.Error), 4<<10, "the reason is short, and fits")
	assert.Contains(t, r.Error, `parameter "p00000" is not declared`)
}

// Item 8: a cluster API in Python signs a request with Debian's
// python3-cryptography alone (JCS as sorted keys without spaces, SSHSIG
// by hand), and a shell script signs with ssh-keygen -Y sign; both run
// on a node of a Debian etcd with TLS and auth.
func TestARequestSignedInPythonOrByTheShellRuns(t *testing.T) {
	t.Parallel()
	if err := exec.Command("/usr/bin/python3", "-c", "import cryptography").Run(); err != nil {
		t.Skip("Debian's python3-cryptography not installed (.ci/run installs it)")
	}
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantRole(t, e, admin, "web1-secret", "--node", "web1")
	grantRole(t, e, admin, "api-secret", "--caller", "api")
	signKey, pub := sshKey(t, "python-api@example")
	authorized := filepath.Join(t.TempDir(), "authorized_keys")
	require.NoError(t, os.WriteFile(authorized, []byte(`ccm-actions="hello" `+pub), 0o644))
	dir := actionConfig(t, map[string]string{"hello": "command: [BIN/hello]\nparams: {who: {required: true}}\nrun_as: {user: ME}\n"},
		map[string]string{"hello": `echo "hello $CCM_PARAM_WHO"` + "\n"})
	web1 := nodeOn(t, e, "web1", "ccm-node-web1", "web1-secret")
	web1.configDir = dir
	web1.startLogged(filepath.Join(t.TempDir(), "agent.log"), "agent", "--debounce", "0s", "--action-keys", authorized)
	root := rootClient(t, e)
	c := cluster.New(root, cluster.Options{})
	eventually(t, 30*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")
	caller0 := externalClient(t, e, "ccm-caller-api", "api-secret")
	head, err := caller0.Get(context.Background(), "/ccm/actions/", clientv3.WithCountOnly())
	require.NoError(t, err)
	clusterID := fmt.Sprintf("%016x", head.Header.ClusterId)

	run := func(id string, signed []byte) *api.Reply {
		_, err := caller0.Put(context.Background(), "/ccm/actions/web1/"+id, string(signed))
		require.NoError(t, err)
		eventually(t, 20*time.Second, func() bool { r := replyOf(t, root, id, "web1"); return r != nil && api.Final(r.State) }, "a reply to %s", id)
		return replyOf(t, root, id, "web1")
	}
	now := time.Now().UTC()
	deadline := now.Add(10 * time.Minute).Format(time.RFC3339)
	id := api.NewID(now)
	out, err := exec.Command("/usr/bin/python3", "testdata/sign_request.py", signKey, "/ccm", clusterID, "web1", id, "hello", "who=wörld <&>", deadline).CombinedOutput()
	require.NoError(t, err, "%s", out)
	r := run(id, out)
	assert.Equal(t, api.StateSucceeded, r.State, r.Error)
	var said string
	require.NoError(t, json.Unmarshal(r.Output, &said))
	assert.Equal(t, "hello wörld <&>\n", said)
	assert.Equal(t, "python-api@example", r.By)

	// ssh-keygen -Y sign over the payload, as a shell script would.
	id = api.NewID(time.Now())
	unsigned, _ := json.Marshal(api.Request{ID: id, Action: "hello", Params: map[string]string{"who": "shell"}, Created: time.Now().UTC(), Deadline: time.Now().Add(time.Hour)})
	payload, err := api.SignedPayload(api.NewBinding("/ccm", head.Header.ClusterId), "web1", unsigned)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "payload")
	require.NoError(t, os.WriteFile(file, payload, 0o644))
	sig, err := exec.Command("ssh-keygen", "-Y", "sign", "-n", api.SignatureNamespace, "-f", signKey, file).CombinedOutput()
	require.NoError(t, err, "%s", sig)
	armored, err := os.ReadFile(file + ".sig")
	require.NoError(t, err)
	var req map[string]any
	require.NoError(t, json.Unmarshal(unsigned, &req))
	req["signature"] = string(armored)
	signed, _ := json.Marshal(req)
	r = run(id, signed)
	assert.Equal(t, api.StateSucceeded, r.State, r.Error)

	// The key may call hello only.
	id = api.NewID(time.Now())
	out, err = exec.Command("/usr/bin/python3", "testdata/sign_request.py", signKey, "/ccm", clusterID, "web1", id, "ccm.plan", "", deadline).CombinedOutput()
	require.NoError(t, err, "%s", out)
	r = run(id, out)
	assert.Equal(t, api.StateRejected, r.State)
	assert.Contains(t, r.Error, `may not call ccm.plan (ccm-actions="hello"`)
}

// Item 10: a handler that declares secret_output (a one-time login URL)
// has its output sealed to the caller's key for the call: etcd and every
// other reader of replies see only the sealed box.
func TestASecretOutputIsSealedToTheCaller(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := actionConfig(t, map[string]string{"login-url": "command: [BIN/login]\nrun_as: {user: ME}\nsecret_output: true\n"},
		map[string]string{"login": "echo https://shop.example/login?token=tok-$CCM_ACTION_ID\n"})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	caller0 := caller(t, etcd, dir)

	res := caller0.action("action", "run", "login-url", "--node", "web1", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	var r api.Reply
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &r))
	assert.Contains(t, string(r.Output), "login?token=tok-"+r.ID, "the caller reads it")

	keyFile := filepath.Join(t.TempDir(), "reply.key")
	res = caller0.action("action", "run", "login-url", "--node", "web1", "--no-wait", "--reply-key", keyFile)
	require.Equal(t, 0, res.code, res.stderr)
	id := strings.TrimSpace(res.stdout)
	eventually(t, 20*time.Second, func() bool { r := replyOf(t, n.cli, id, "web1"); return r != nil && api.Final(r.State) }, "the reply")
	st, err := os.Stat(keyFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	res = caller0.action("action", "get", id)
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "[sealed")
	assert.NotContains(t, res.stdout, "token=")
	res = caller0.action("action", "get", id, "--reply-key", keyFile)
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "token=tok-"+id)

	all, err := n.cli.Get(context.Background(), "/ccm/", clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range all.Kvs {
		assert.NotContains(t, string(kv.Value), "token=", "%s", kv.Key)
	}
	// A request without a key to seal to is refused before it runs.
	id = api.NewID(time.Now())
	raw, _ := json.Marshal(api.Request{ID: id, Action: "login-url", Created: time.Now()})
	_, err = n.cli.Put(context.Background(), api.NewKeys("").ActionKey("web1", id), string(raw))
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool { r := replyOf(t, n.cli, id, "web1"); return r != nil && api.Final(r.State) }, "the reply")
	assert.Contains(t, replyOf(t, n.cli, id, "web1").Error, "needs a reply_key")
}

// Nodes cloned from one image share an action key; ccm status says so.
// And an action key others may read refuses the agent's start.
func TestStatusNamesNodesThatShareAnActionKey(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	web1 := newNode(t, "web1", "../examples/ccm", etcd.Endpoints())
	web1.start("agent", "--debounce", "0s")
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "web1 alive")
	key, err := os.ReadFile(filepath.Join(web1.state, "keys", "action.key"))
	require.NoError(t, err)

	web2 := newNode(t, "web2", "../examples/ccm", etcd.Endpoints())
	require.NoError(t, os.WriteFile(filepath.Join(web2.state, "action.key"), key, 0o644))
	r := web2.run("", "agent")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "action.key is mode 0644; the action key must be 0600 in a 0700 directory")
	require.NoError(t, os.Chmod(filepath.Join(web2.state, "action.key"), 0o600))
	web2.start("agent", "--debounce", "0s")
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web2").Presence != nil }, "web2 alive")
	r = newNode(t, "", "../examples/ccm", etcd.Endpoints()).run("", "status")
	assert.Contains(t, r.stdout, "Action key: nodes web1, web2 publish the same key")
}

// testCgroup makes a cgroup v2 directory for an agent's runs, or skips
// where the machine has none the test may write.
func testCgroup(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	mount := ""
	for _, line := range strings.Split(string(raw), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && strings.HasPrefix(post, "cgroup2 ") && len(f) >= 5 {
			mount = f[4]
		}
	}
	if mount == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	dir := filepath.Join(mount, fmt.Sprintf("ccm-test-%d", os.Getpid()), strings.ReplaceAll(t.Name(), "/", "-"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cgroup v2 at %s is not writable here: %v", mount, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		t.Skip("no cgroup.kill (Linux 5.14 or later)")
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
		eventually(t, 5*time.Second, func() bool { return os.Remove(dir) == nil || os.IsNotExist(os.Remove(dir)) }, "the test cgroup is removed")
		_ = os.Remove(filepath.Dir(dir))
	})
	return dir
}

// Item 13: nothing a handler started outlives its timeout, its exit or
// its agent, setsid or not: each run has a cgroup of its own, and
// cgroup.kill ends it. Before, a setsid child survived the timeout, and a
// sleep in the handler's own group survived a SIGKILLed agent.
func TestNothingAHandlerStartedOutlivesItsRunOrItsAgent(t *testing.T) {
	t.Parallel()
	cg := testCgroup(t)
	etcd := etcdtest.New(t, 1)
	work := t.TempDir()
	pid := func(name string) string { return filepath.Join(work, name) }
	escape := func(file string) string {
		return fmt.Sprintf("setsid sh -c 'echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 300' < /dev/null > /dev/null 2>&1 &\nwhile [ ! -e %s ]; do sleep 0.01; done\n", file, file, file, file)
	}
	dir := actionConfig(t, map[string]string{
		"hang":   "command: [BIN/hang]\nrun_as: {user: ME}\ntimeout: 3s\n",
		"daemon": "command: [BIN/daemon]\nrun_as: {user: ME}\n",
		"stay":   "command: [BIN/stay]\nrun_as: {user: ME}\ntimeout: 5m\n",
	}, map[string]string{
		"hang":   escape(pid("hang")) + "exec sleep 300\n",
		"daemon": escape(pid("daemon")) + "echo started\n",
		"stay":   fmt.Sprintf("sleep 300 &\necho $! > %s\nwait\n", pid("stay")),
	})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	agentProc := n.start("agent", "--debounce", "0s", "--cgroup", cg)
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	eventually(t, 20*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	replies, _ := callReplies(t, cli, client.Call{Action: "hang", To: client.Targets{Nodes: []string{"web1"}}})
	assert.Equal(t, api.StateTimedOut, replies["web1"].State)
	escaped := readPids(t, pid("hang"))[0]
	eventually(t, 10*time.Second, func() bool { return !alive(escaped) }, "the setsid child is killed at the timeout")

	replies, _ = callReplies(t, cli, client.Call{Action: "daemon", To: client.Targets{Nodes: []string{"web1"}}})
	assert.Equal(t, api.StateSucceeded, replies["web1"].State, replies["web1"].Error)
	escaped = readPids(t, pid("daemon"))[0]
	eventually(t, 10*time.Second, func() bool { return !alive(escaped) }, "the daemon it left is killed when it exits")

	s, err := client.New(cli, client.Options{}).Send(context.Background(), client.Call{Action: "stay", To: client.Targets{Nodes: []string{"web1"}}})
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(pid("stay")); return err == nil }, "the handler started its child")
	child := readPids(t, pid("stay"))[0]
	require.NoError(t, agentProc.Process.Signal(syscall.SIGKILL))
	_, _ = agentProc.Process.Wait()
	n.start("agent", "--debounce", "0s", "--cgroup", cg)
	eventually(t, 30*time.Second, func() bool {
		r := replyOf(t, cli, s.ID, "web1")
		return r != nil && r.State == api.StateInterrupted
	}, "the restarted agent reports it interrupted")
	eventually(t, 10*time.Second, func() bool { return !alive(child) }, "the child in the killed agent's run is killed at the next start")
}

// The kill loop of actions (make soak deals more kills): requests arrive
// while the agent is SIGKILLed at random moments and restarted. In the
// end every request has a final reply that is honest: succeeded ran
// exactly once, interrupted at most once (it started, and may have been
// killed before its first instruction), anything else never.
func TestSIGKILLAtRandomPointsRunsEachActionOnceOrSaysSo(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	runs := filepath.Join(t.TempDir(), "runs")
	dir := actionConfig(t, map[string]string{"work": "command: [BIN/work]\nrun_as: {user: ME}\nconcurrency: 3\ntimeout: 1m\n"},
		map[string]string{"work": fmt.Sprintf("echo $CCM_ACTION_ID >> %s\nsleep 0.$(( $$ %% 4 ))\n", runs)})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	cli := etcd.Client(t)
	caller0 := client.New(cli, client.Options{})
	rounds := max(3, soakIterations()/4)
	var ids []string
	for round := range rounds {
		agentProc := n.start("agent", "--debounce", "0s")
		for range 8 {
			s, err := caller0.Send(context.Background(), client.Call{Action: "work", To: client.Targets{Nodes: []string{"web1"}}})
			require.NoError(t, err)
			ids = append(ids, s.ID)
		}
		time.Sleep(time.Duration(round%5) * 150 * time.Millisecond) // where the kill lands: the point of the test
		require.NoError(t, agentProc.Process.Signal(syscall.SIGKILL))
		_, _ = agentProc.Process.Wait()
	}
	n.start("agent", "--debounce", "0s")
	eventually(t, 2*time.Minute, func() bool { return len(finalReplies(t, cli, "web1", ids)) == len(ids) }, "every request has a final reply")
	count := map[string]int{}
	for _, id := range runsOf(t, runs) {
		count[id]++
	}
	states := map[string]int{}
	for id, r := range finalReplies(t, cli, "web1", ids) {
		states[r.State]++
		switch r.State {
		case api.StateSucceeded:
			assert.Equal(t, 1, count[id], "%s succeeded: it ran exactly once", id)
		case api.StateInterrupted:
			assert.LessOrEqual(t, count[id], 1, "%s was interrupted: it ran at most once", id)
		default:
			assert.Zero(t, count[id], "%s is %s: it never ran (%s)", id, r.State, r.Error)
		}
	}
	t.Logf("%d requests over %d kills: %v", len(ids), rounds, states)
}

// An RSA --sign-key is refused by the CLI, with the reason, before any
// request is written (before, the node rejected it).
func TestTheCLIRefusesAnRSASigningKey(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed (.ci/run installs openssh-client)")
	}
	key := filepath.Join(t.TempDir(), "id_rsa")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", key).CombinedOutput()
	require.NoError(t, err, "%s", out)
	r := caller(t, nil, t.TempDir()).action("action", "run", "site-info", "--node", "web1", "--sign-key", key)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "--sign-key "+key+": a ssh-rsa key; only ssh-ed25519 keys sign requests")
}
