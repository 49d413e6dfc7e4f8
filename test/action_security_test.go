package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// sshKey makes an ed25519 key pair with the real ssh-keygen and returns
// the private key file and the public key line.
func sshKey(t *testing.T, comment string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed (.ci/run installs openssh-client)")
	}
	file := filepath.Join(t.TempDir(), "id_ed25519")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file).CombinedOutput()
	require.NoError(t, err, "%s", out)
	pub, err := os.ReadFile(file + ".pub")
	require.NoError(t, err)
	return file, string(pub)
}

// grantRole runs the etcdctl lines `ccm rbac print` prints with args.
func grantRole(t *testing.T, e etcdctl, admin *node, password string, args ...string) {
	t.Helper()
	r := admin.run("", append([]string{"rbac", "print"}, args...)...)
	require.Equal(t, 0, r.code, r.stderr)
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		line = passwordVar.ReplaceAllLiteralString(line, password)
		fields := strings.Fields(line)
		require.Equal(t, "etcdctl", fields[0], line)
		out, err := e.Etcdctl(fields[1:]...)
		require.NoError(t, err, "%s: %s", line, out)
	}
}

// etcdctl runs etcdctl as root against a test cluster.
type etcdctl interface {
	Etcdctl(args ...string) (string, error)
}

// passwordVar is the shell variable ccm rbac print reads a password from.
var passwordVar = regexp.MustCompile(`"\$CCM_[A-Z]+_PASSWORD"`)

// externalClient is a client of the external etcd as user.
func externalClient(t *testing.T, e *etcdtest.External, user, password string) *clientv3.Client {
	t.Helper()
	cert, key := e.PKI.Issue(user)
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{e.Endpoint}, CACert: e.PKI.CACert, Cert: cert, Key: key, User: user, Password: password, DialTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// secretHandler echoes its parameters, the secret one included, to
// stdout and stderr: ccm must keep the secret out of the reply and log.
const secretHandler = `command: [BIN/tell]
params:
  site: {pattern: '[a-z0-9-]+', required: true}
  password: {secret: true, required: true}
run_as: {user: ME}
`

const tellScript = `in=$(cat)
password=$(echo "$in" | sed 's/.*"password":"\([^"]*\)".*/\1/')
echo "site=$CCM_PARAM_SITE env_password=${CCM_PARAM_PASSWORD:-none} stdin=$(echo "$in" | tr -d '"{}')"
echo "stderr says $password" >&2
`

func TestActionsOverRBACSignedWithSecretsAgainstDebianEtcd(t *testing.T) {
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	grantRole(t, e, admin, "web1-secret", "--node", "web1")
	grantRole(t, e, admin, "web2-secret", "--node", "web2")
	grantRole(t, e, admin, "api-secret", "--caller", "api")

	signKey, pub := sshKey(t, "cluster-api@example")
	otherKey, _ := sshKey(t, "intruder@example")
	authorized := filepath.Join(t.TempDir(), "authorized_keys")
	require.NoError(t, os.WriteFile(authorized, []byte("# the cluster API\n"+pub), 0o644))
	dir := actionConfig(t, map[string]string{"tell": secretHandler, "quick": "command: [/bin/true]\nrun_as: {user: ME}\n"},
		map[string]string{"tell": tellScript})

	logs := map[string]string{}
	for _, name := range []string{"web1", "web2"} {
		n := nodeOn(t, e, name, "ccm-node-"+name, name+"-secret")
		n.configDir = dir
		logs[name] = filepath.Join(t.TempDir(), "agent.log")
		n.startLogged(logs[name], "agent", "--debounce", "0s", "--action-keys", authorized)
	}
	root := rootClient(t, e)
	c := cluster.New(root, cluster.Options{})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logs["web1"])
			t.Logf("web1's log:\n%s", b)
		}
	})
	eventually(t, 30*time.Second, func() bool {
		alive, err := c.Alive(context.Background())
		return err == nil && len(alive) == 2 && alive[0].ActionKey != "" && alive[1].ActionKey != ""
	}, "both agents alive, each with its action key published")

	// The cluster API, with its caller role only: a signed call with a
	// secret to both nodes.
	caller0 := nodeOn(t, e, "", "ccm-caller-api", "api-secret")
	caller0.configDir = dir
	r := caller0.run("", "action", "run", "tell", "--node", "web1", "--node", "web2", "--param", "site=shop",
		"--secret", "password=hunter2-very-secret", "--sign-key", signKey, "--json")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	var id string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var reply api.Reply
		require.NoError(t, json.Unmarshal([]byte(line), &reply))
		assert.Equal(t, api.StateSucceeded, reply.State)
		assert.Contains(t, string(reply.Output), "site=shop env_password=none stdin=password:[secret],site:shop", "the handler got the secret on stdin only; the reply does not have it")
		id = reply.ID
	}
	assert.NotContains(t, r.stdout+r.stderr, "hunter2")

	// The secret is nowhere in clear: not in etcd, not in ccm action get,
	// not in the agents' logs (the handler printed it on stderr too).
	all, err := e.Etcdctl("get", "--prefix", "/ccm/")
	require.NoError(t, err)
	assert.Contains(t, all, id)
	assert.NotContains(t, all, "hunter2")
	assert.Equal(t, 2, strings.Count(all, "ccm-sealed:"), "sealed once per node")
	r = caller0.run("", "action", "get", id, "--json")
	require.Equal(t, 0, r.code, r.stderr)
	assert.NotContains(t, r.stdout, "hunter2")
	for name, log := range logs {
		b, err := os.ReadFile(log)
		require.NoError(t, err)
		assert.NotContains(t, string(b), "hunter2", name)
		assert.Contains(t, string(b), "stderr says [secret]", name)
		assert.Contains(t, string(b), `"signed_by":"cluster-api@example"`, name)
	}

	// A node reads its own requests only, writes none, and cannot forge
	// another node's reply.
	web1 := externalClient(t, e, "ccm-node-web1", "web1-secret")
	ctx := context.Background()
	_, err = web1.Get(ctx, "/ccm/actions/web1/", clientv3.WithPrefix())
	require.NoError(t, err, "its own requests")
	_, err = web1.Get(ctx, "/ccm/actions/web2/", clientv3.WithPrefix())
	assert.ErrorContains(t, err, "permission denied", "another node's requests")
	for _, key := range []string{"/ccm/actions/web1/forged", "/ccm/actions/web2/forged", "/ccm/nodes/web2/replies/" + id, "/ccm/labels/web1"} {
		_, err = web1.Put(ctx, key, `{"id":"forged","action":"tell"}`)
		assert.ErrorContains(t, err, "permission denied", key)
	}
	// It reads the labels an operator gave it, and writes none.
	_, err = web1.Get(ctx, "/ccm/labels/web1")
	require.NoError(t, err, "its own labels")
	// The caller writes requests and reads replies, and nothing else.
	apiCli := externalClient(t, e, "ccm-caller-api", "api-secret")
	for _, key := range []string{"/ccm/objects/sites/evil", "/ccm/failure", "/ccm/nodes/web1/replies/forged"} {
		_, err = apiCli.Put(ctx, key, `{}`)
		assert.ErrorContains(t, err, "permission denied", key)
	}

	// Signatures: each of these is rejected, with its reason, and runs
	// nothing.
	signer, err := api.LoadSigner(signKey)
	require.NoError(t, err)
	intruder, err := api.LoadSigner(otherKey)
	require.NoError(t, err)
	head, err := root.Get(ctx, "/ccm/", clientv3.WithCountOnly())
	require.NoError(t, err)
	here := api.NewBinding("/ccm", head.Header.ClusterId)
	staging := api.NewBinding("/staging", head.Header.ClusterId)
	elsewhere := api.NewBinding("/ccm", head.Header.ClusterId+1)
	raw := func(node string, mutate func(*api.Request)) string {
		now := time.Now().UTC()
		req := &api.Request{ID: api.NewID(now), Action: "quick", Created: now, Deadline: now.Add(time.Hour)}
		mutate(req)
		b, err := json.Marshal(req)
		require.NoError(t, err)
		_, err = apiCli.Put(ctx, "/ccm/actions/"+node+"/"+req.ID, string(b))
		require.NoError(t, err)
		return req.ID
	}
	cases := []struct {
		name, node string
		mutate     func(*api.Request)
		want       string
	}{
		{"unsigned", "web1", func(*api.Request) {}, "not signed"},
		{"unsigned, past its deadline", "web1", func(r *api.Request) { r.Deadline = time.Now().Add(-time.Hour) }, "not signed"},
		{"unknown key", "web1", func(r *api.Request) { require.NoError(t, api.Sign(intruder, here, "web1", r)) }, "a key not in " + authorized},
		{"tampered", "web1", func(r *api.Request) {
			require.NoError(t, api.Sign(signer, here, "web1", r))
			r.Action = "tell"
			r.Params = map[string]string{"site": "x"}
		}, "does not verify"},
		{"timeout rewritten", "web1", func(r *api.Request) {
			require.NoError(t, api.Sign(signer, here, "web1", r))
			r.Timeout = api.Duration(time.Nanosecond)
		}, "does not verify"},
		{"by rewritten", "web1", func(r *api.Request) {
			require.NoError(t, api.Sign(signer, here, "web1", r))
			r.By = "alice@ops"
		}, "does not verify"},
		{"replayed to another node", "web2", func(r *api.Request) { require.NoError(t, api.Sign(signer, here, "web1", r)) }, "does not verify"},
		{"replayed from another prefix", "web1", func(r *api.Request) { require.NoError(t, api.Sign(signer, staging, "web1", r)) }, "does not verify"},
		{"replayed from another etcd cluster", "web1", func(r *api.Request) { require.NoError(t, api.Sign(signer, elsewhere, "web1", r)) }, "does not verify"},
		{"replayed after its deadline", "web1", func(r *api.Request) {
			r.Deadline = time.Now().Add(-time.Second)
			require.NoError(t, api.Sign(signer, here, "web1", r))
		}, "passed before the node picked it up"},
		{"no deadline", "web1", func(r *api.Request) {
			r.Deadline = time.Time{}
			require.NoError(t, api.Sign(signer, here, "web1", r))
		}, "a signed request needs a deadline"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := raw(tc.node, tc.mutate)
			eventually(t, 20*time.Second, func() bool { r := replyOf(t, root, id, tc.node); return r != nil && api.Final(r.State) }, "a reply")
			reply := replyOf(t, root, id, tc.node)
			assert.Equal(t, api.StateRejected, reply.State)
			assert.Contains(t, reply.Error, tc.want)
		})
	}
	// Properly signed through the Go client, it runs.
	replies, errs := callReplies(t, apiCli, client.Call{Action: "quick", To: client.Targets{Nodes: []string{"web1"}}, By: "alice@ops"}, client.Options{Signer: signer})
	require.Empty(t, errs)
	assert.Equal(t, api.StateSucceeded, replies["web1"].State)
	assert.Equal(t, "cluster-api@example", replies["web1"].By, "a signed request's caller is its key's comment, never its own claim")
	assert.True(t, replies["web1"].Signed)
}

// startLogged runs the ccm binary in the background with its stderr in
// log.
func (n *node) startLogged(log string, args ...string) *exec.Cmd {
	n.t.Helper()
	f, err := os.Create(log)
	require.NoError(n.t, err)
	n.t.Cleanup(func() { f.Close() })
	base := []string{
		"--endpoints", strings.Join(n.endpoints, ","), "--node", n.name, "--root", n.root,
		"--state-dir", n.state, "--config-dir", n.configDir, "--log-format", "json", "--log-level", "info",
	}
	cmd := exec.Command(ccmBin, append(append(base, n.flags...), args...)...)
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stderr = f
	require.NoError(n.t, cmd.Start())
	n.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	return cmd
}

// unixUser creates a user (and a supplementary group) for the test, or
// skips when not root.
func unixUser(t *testing.T, name, group string) *user.User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating UNIX users needs root (CI runs as root)")
	}
	_ = exec.Command("userdel", "-r", name).Run()
	_ = exec.Command("groupdel", group).Run()
	out, err := exec.Command("groupadd", group).CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command("useradd", "-m", "-K", "UID_MIN=1000", "-G", group, name).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() {
		_ = exec.Command("userdel", "-r", name).Run()
		_ = exec.Command("groupdel", group).Run()
	})
	u, err := user.Lookup(name)
	require.NoError(t, err)
	return u
}

func TestActionsRunAsTheSitesUnixUser(t *testing.T) {
	site := unixUser(t, "ccmsite1", "ccmweb")
	web, err := user.LookupGroup("ccmweb")
	require.NoError(t, err)
	etcd := etcdtest.New(t, 1)
	whoami := `echo "$(id -u) $(id -g) $(id -G | tr ' ' ,) $HOME $USER $(pwd)"` + "\n"
	dir := actionConfig(t, map[string]string{
		"as-site": "command: [BIN/whoami]\nparams: {user: {required: true}}\nrun_as: {param: user, min_uid: 1000}\n",
		"as-root": "command: [BIN/whoami]\nrun_as: {user: root}\n",
	}, map[string]string{"whoami": whoami})
	// The site's user must reach the handler: t.TempDir's parent is 0700.
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)

	call := func(action string, params map[string]string) api.Reply {
		replies, errs := callReplies(t, n.cli, client.Call{Action: action, To: client.Targets{Nodes: []string{"web1"}}, Params: params})
		require.Empty(t, errs)
		return replies["web1"]
	}
	r := call("as-site", map[string]string{"user": "ccmsite1"})
	require.Equal(t, api.StateSucceeded, r.State, r.Error)
	var out string
	require.NoError(t, json.Unmarshal(r.Output, &out))
	fields := strings.Fields(out)
	require.Len(t, fields, 6, out)
	assert.Equal(t, site.Uid, fields[0], "uid")
	assert.Equal(t, site.Gid, fields[1], "gid")
	assert.Contains(t, strings.Split(fields[2], ","), web.Gid, "supplementary groups")
	assert.NotContains(t, strings.Split(fields[2], ","), "0", "no group of root's")
	assert.Equal(t, site.HomeDir, fields[3], "HOME")
	assert.Equal(t, "ccmsite1", fields[4])
	assert.Equal(t, site.HomeDir, fields[5], "it runs in its home")

	for _, tc := range []struct{ user, want string }{
		{"root", "below min_uid 1000"},
		{"daemon", "below min_uid 1000"},
		{"no-such-user", `no such user "no-such-user"`},
	} {
		r := call("as-site", map[string]string{"user": tc.user})
		assert.Equal(t, api.StateRejected, r.State, tc.user)
		assert.Contains(t, r.Error, tc.want, tc.user)
	}
	r = call("as-root", nil)
	require.Equal(t, api.StateSucceeded, r.State, r.Error)
	assert.Contains(t, string(r.Output), `"0 0 `, "root only when the handler says {user: root}")

	// Item 12 of the trust review: a uid above min_uid is not enough. A
	// user in disk, shadow or adm, or whose primary group is root's, is
	// refused, naming the group.
	groupsUser(t, "ccmbad1", "-U", "-u", "1500", "-G", "disk,shadow,adm")
	groupsUser(t, "ccmbad2", "-N", "-u", "1501", "-g", "0")
	r = call("as-site", map[string]string{"user": "ccmbad1"})
	assert.Equal(t, api.StateRejected, r.State)
	assert.Regexp(t, `run_as: user "ccmbad1": group (disk|shadow|adm) is denied \(deny_groups\)`, r.Error)
	r = call("as-site", map[string]string{"user": "ccmbad2"})
	assert.Equal(t, api.StateRejected, r.State)
	assert.Contains(t, r.Error, `run_as: user "ccmbad2": group root is denied (deny_groups)`)
}

// groupsUser creates a user with useradd's args, removed at the end.
func groupsUser(t *testing.T, name string, args ...string) {
	t.Helper()
	_ = exec.Command("userdel", "-r", name).Run()
	out, err := exec.Command("useradd", append(append([]string{"-M", "-K", "GID_MIN=1000"}, args...), name)...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
}

func TestHostileRequestsAndHandlersGetAClearStateAndTheAgentStaysHealthy(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	pids := filepath.Join(t.TempDir(), "daemon.pid")
	dir := actionConfig(t, map[string]string{
		"echo":   echoHandler,
		"flood":  "command: [BIN/flood]\nrun_as: {user: ME}\n",
		"escape": "command: [BIN/escape]\nrun_as: {user: ME}\n",
		"daemon": "command: [BIN/daemon]\nrun_as: {user: ME}\n",
	}, map[string]string{
		"echo-params": echoScript,
		"flood":       "head -c 100000000 /dev/zero | tr '\\0' x\n",
		"escape":      `printf '\033]0;owned\007\033[2J\033[31mred\n'` + "\n",
		// setsid: out of the handler's process group, holding stdout.
		"daemon": "setsid sh -c 'echo $$ > " + pids + "; exec sleep 300' &\necho started\n",
	})
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, 1, api.ResultConverged)
	t.Cleanup(func() {
		for _, pid := range readPidsIfAny(pids) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	call := func(action string, params map[string]string) api.Reply {
		t.Helper()
		replies, errs := callReplies(t, n.cli, client.Call{Action: action, To: client.Targets{Nodes: []string{"web1"}}, Params: params})
		require.Empty(t, errs)
		return replies["web1"]
	}

	for _, tc := range []struct {
		name   string
		params map[string]string
		state  string
		want   string
	}{
		{"a 1 MB value", map[string]string{"site": "a", "note": strings.Repeat("x", 1<<20)}, api.StateRejected, "bytes, over the limit of 524288"},
		{"a 100 KB value", map[string]string{"site": "a", "note": strings.Repeat("x", 100<<10)}, api.StateRejected, "parameter note: 102400 bytes, over the limit of 65536"},
		{"a NUL", map[string]string{"site": "a", "note": "a\x00b"}, api.StateRejected, "parameter note: contains a NUL byte"},
		{"__proto__", map[string]string{"site": "a", "__proto__": "{}"}, api.StateRejected, `parameter "__proto__" is not declared`},
		{"shell in the pattern", map[string]string{"site": "a;reboot"}, api.StateRejected, "parameter site: does not match"},
		{"invalid UTF-8", map[string]string{"site": "a", "note": "\xff\xfe"}, api.StateSucceeded, ""},
	} {
		r := call("echo", tc.params)
		assert.Equal(t, tc.state, r.State, tc.name)
		assert.Contains(t, r.Error, tc.want, tc.name)
	}

	start := time.Now()
	r := call("flood", nil)
	assert.Equal(t, api.StateSucceeded, r.State)
	assert.Less(t, len(r.Output), actions.MaxOutput+200, "100 MB of output is cut to 64 KiB")
	assert.Contains(t, string(r.Output), "more bytes of output dropped")
	t.Logf("100 MB of output handled in %s", time.Since(start))

	// Escape sequences stay in the reply as data and are escaped on a
	// terminal.
	r = call("escape", nil)
	assert.Equal(t, api.StateSucceeded, r.State)
	res := caller(t, etcd, dir).action("action", "run", "escape", "--node", "web1")
	require.Equal(t, 0, res.code, res.stderr)
	assert.NotContains(t, res.stdout, "\x1b", "no raw escape reaches the terminal")
	assert.Contains(t, res.stdout, `\x1b]0;owned\a`)

	// A daemon that keeps the handler's stdout open does not hold the
	// reply: it comes once the handler exits (and its pipe is let go).
	start = time.Now()
	r = call("daemon", nil)
	assert.Equal(t, api.StateSucceeded, r.State, r.Error)
	assert.Contains(t, string(r.Output), "started")
	assert.Less(t, time.Since(start), 15*time.Second)

	require.NoError(t, n.ag.Healthy())
	// Ready also asks that the watch answered within its liveness: a
	// loaded machine may miss that for a moment.
	eventually(t, 30*time.Second, func() bool { return n.ag.Ready() == nil }, "the agent is ready")
	r = call("echo", map[string]string{"site": "after"})
	assert.Equal(t, api.StateSucceeded, r.State, "the agent still answers")
}

func readPidsIfAny(file string) []int {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		var p int
		if _, err := fmt.Sscan(f, &p); err == nil {
			out = append(out, p)
		}
	}
	return out
}
