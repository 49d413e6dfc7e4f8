package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
	"github.com/ccm-dev/ccm/internal/releases"
)

// trustedDir is a release directory: sites.yaml renders one file per
// site, with fileExtra under its file entry and configExtra under the
// configuration; files are more files (path -> content), written 0755
// when their path starts with check/.
func trustedDir(t *testing.T, fileExtra, configExtra string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	yaml := "subscribes: [sites]\nfiles:\n  - path: /sites/{{ .Object.ID }}.conf\n    for_each: sites\n    content: \"v={{ .Object.Data.v }}\\n\"\n" +
		fileExtra + configExtra + "timeout: 60s\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(yaml), 0o644))
	for p, text := range files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(p, "check/") {
			mode = 0o777
		}
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(text), mode))
		require.NoError(t, os.Chmod(filepath.Join(dir, p), mode))
	}
	return dir
}

// runWithin runs ccm as n, killed after d: a command that should refuse
// at once never hangs the test.
func (n *node) runWithin(d time.Duration, args ...string) result {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	base := []string{"--endpoints", strings.Join(n.endpoints, ","), "--node", n.name, "--root", n.root,
		"--state-dir", n.state, "--config-dir", n.configDir, "--log-format", "json"}
	cmd := exec.CommandContext(ctx, ccmBin, append(append(base, n.flags...), args...)...)
	cmd.Env = append(os.Environ(), n.env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	}
	if ctx.Err() != nil {
		code = -1
	}
	return result{code: code, stderr: string(out)}
}

// manifestID is a release id as ccm computes it, for a manifest written
// by hand.
func manifestID(files []releases.File) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%04o\x00%d\x00%s\n", f.Path, uint32(f.Mode), f.Size, f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The seven reproductions of issue 35 against Debian's etcd with TLS,
// auth and the roles `ccm rbac print` prints: the release pipeline's etcd
// identity, or a local user on a node, alone can make no node run
// anything a release key's holder did not sign.
func TestANodeRunsOnlyWhatASignerApprovedOnDebiansEtcd(t *testing.T) {
	t.Parallel()
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "", "root", "root-secret")
	for _, n := range []string{"web1", "web2", "web3", "web4"} {
		grantNodeRole(t, e, admin, n, n+"-secret")
	}
	grantRole(t, e, admin, "ops-secret", "--operator", "alice")
	grantRole(t, e, admin, "ci-secret", "--release", "ci")
	ops := nodeOn(t, e, "", "ccm-operator-alice", "ops-secret")
	ops.configDir = t.TempDir()
	releaser := nodeOn(t, e, "", "ccm-release-ci", "ci-secret")
	writer := externalClient(t, e, "ccm-release-ci", "ci-secret") // the pipeline's etcd credentials
	root := rootClient(t, e)
	c := cluster.New(root, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	require.Equal(t, 0, ops.run(`{"v": "a"}`, "object", "put", "sites", "s000").code)
	key, keys := releaseKeys(t)
	nodeAs := func(name string) *node {
		n := nodeOn(t, e, name, "ccm-node-"+name, name+"-secret")
		n.configDir = t.TempDir()
		return n
	}
	pushAs := func(n *node, dir string, args ...string) string {
		t.Helper()
		r := n.run("", append([]string{"release", "push", dir}, args...)...)
		require.Equal(t, 0, r.code, r.stderr)
		return strings.TrimSpace(r.stdout)
	}
	promoteAs := func(id string, args ...string) {
		t.Helper()
		r := ops.run("", append([]string{"release", "promote", id[:12]}, args...)...)
		require.Equal(t, 0, r.code, r.stderr)
	}
	noFailure := func(t *testing.T) {
		t.Helper()
		f, err := c.Failure(ctx)
		require.NoError(t, err)
		assert.Nil(t, f, "no node's failure flag")
	}
	// objectChange writes s000 and returns the revision: a run of every
	// node that runs a release then reports it.
	objectChange := func(v string) int64 {
		resp, err := root.Put(ctx, "/ccm/objects/sites/s000", `{"v": "`+v+`"}`)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	convergedAt := func(t *testing.T, name string, rev int64, id string) {
		t.Helper()
		eventually(t, 60*time.Second, func() bool {
			s := nodeStatus(t, root, name)
			return s != nil && s.Revision >= rev && s.Result == api.ResultConverged && s.Release == id
		}, "%s converges revision %d under release %s", name, rev, id[:12])
	}
	presence := func(name string) *api.Presence {
		p, err := c.Presence(ctx, name)
		require.NoError(t, err)
		return p
	}
	// fresh clears a flag an earlier subtest may have raised (on a ccm
	// without these guards), so that each fails for its own reason.
	fresh := func() { ops.run("", "resume") }

	// 1. plan --check ran an unsigned release's checks as root.
	t.Run("plan --check verifies with CCM_RELEASE_KEYS before any check runs", func(t *testing.T) {
		proof := filepath.Join(t.TempDir(), "proof")
		check := fmt.Sprintf("    check: [sh, -c, 'id > %s']\n", proof)
		unsigned := pushAs(releaser, trustedDir(t, check, "", nil))
		promoteAs(unsigned)
		web1 := nodeAs("web1")
		web1.env = append(web1.env, "CCM_RELEASE_KEYS="+keys)
		r := web1.run("", "plan", "--check", "--label", "x=y")
		assert.Equal(t, 1, r.code, r.stdout)
		assert.Contains(t, r.stderr, "is not signed, and release keys are configured")
		assert.NoFileExists(t, proof, "no check of an unsigned release runs")
		r = web1.run("", "apply", "--once", "--yes")
		assert.Equal(t, 1, r.code, r.stdout)
		assert.Contains(t, r.stderr, "is not signed, and release keys are configured", "apply --once reads CCM_RELEASE_KEYS too")
		assert.NoFileExists(t, proof)

		pushed := pushAs(releaser, trustedDir(t, check+"    mode: \"0640\"\n", "", nil))
		r = web1.run("", "plan", "--check", "--release", pushed[:12], "--label", "x=y")
		assert.Equal(t, 1, r.code, r.stdout)
		assert.Contains(t, r.stderr, "is not signed, and release keys are configured")
		r = web1.run("", "plan", "--release", pushed[:12], "--label", "x=y")
		assert.Equal(t, 1, r.code, "without --check too: %s", r.stdout)
		assert.NoFileExists(t, proof)

		// Signed, its checks run; without keys, the command says what
		// authenticates the release.
		signed := pushAs(releaser, trustedDir(t, check+"    mode: \"0600\"\n", "", nil), "--sign-key", key)
		r = web1.run("", "plan", "--check", "--release", signed[:12], "--label", "x=y")
		assert.Equal(t, 2, r.code, "%s%s", r.stdout, r.stderr)
		assert.FileExists(t, proof)
		web1.env = web1.env[:len(web1.env)-1]
		r = web1.run("", "plan", "--release", signed[:12], "--label", "x=y")
		assert.Equal(t, 2, r.code, r.stderr)
		assert.Contains(t, r.stderr, "releases are authenticated by etcd RBAC alone")
	})

	// 5. A release key limited to some nodes or actions was trusted for
	// every node.
	t.Run("a release key with an option that does not apply is refused", func(t *testing.T) {
		_, pub := sshKey(t, "limited@ci")
		limited := filepath.Join(t.TempDir(), "release_keys")
		require.NoError(t, os.WriteFile(limited, []byte(`ccm-nodes="web9",ccm-actions="none" `+pub), 0o644))
		web1 := nodeAs("web1")
		r := web1.runWithin(30*time.Second, "agent", "--release-keys", limited, "--release-dir", filepath.Join(t.TempDir(), "r"))
		assert.Equal(t, 1, r.code, r.stderr)
		assert.Contains(t, r.stderr, limited+": line 1: option ccm-nodes: ccm reads only expiry-time here")
		web1.env = append(web1.env, "CCM_RELEASE_KEYS="+limited)
		r = web1.run("", "plan", "--label", "x=y")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "line 1: option ccm-actions")
	})

	// 6. --release-dir was pruned whole.
	t.Run("a shared release directory is refused and nothing in it removed", func(t *testing.T) {
		shared := t.TempDir()
		notes := filepath.Join(shared, "notes.txt")
		require.NoError(t, os.WriteFile(notes, []byte("mine"), 0o644))
		r := nodeAs("web1").runWithin(30*time.Second, "agent", "--release-dir", shared, "--release-keys", keys)
		assert.Equal(t, 1, r.code, r.stderr)
		assert.Contains(t, r.stderr, "holds notes.txt, which ccm did not stage")
		assert.FileExists(t, notes)
	})

	// 2. A manifest with an alias path ran what the listing hid.
	t.Run("a manifest with an alias path, written with the release writer's credentials, is refused", func(t *testing.T) {
		fresh()
		marker := filepath.Join(t.TempDir(), "hidden")
		good := "subscribes: [sites]\nfiles:\n  - path: /sites/{{ .Object.ID }}.conf\n    for_each: sites\n    content: \"alias\\n\"\ntimeout: 60s\n"
		evil := good + fmt.Sprintf("on_change:\n  - [sh, -c, 'id > %s']\n", marker)
		var files []releases.File
		for _, f := range []struct{ path, text string }{{"sites.yaml", good}, {"sites.yaml/.", evil}} {
			sum := sha256.Sum256([]byte(f.text))
			files = append(files, releases.File{Path: f.path, Mode: 0o644, Size: len(f.text), SHA256: hex.EncodeToString(sum[:]), Chunks: 1, Content: []byte(f.text)})
		}
		id := manifestID(files)
		k := api.NewKeys("")
		for i, f := range files {
			_, err := writer.Put(ctx, k.ReleaseChunkKey(id, i, 0), string(f.Content))
			require.NoError(t, err)
		}
		raw, err := json.Marshal(releases.Release{ID: id, Time: time.Now(), Files: files, Author: "ci"})
		require.NoError(t, err)
		_, err = writer.Put(ctx, k.ReleaseKey(id), string(raw))
		require.NoError(t, err)

		r := ops.run("", "release", "show", id[:12])
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, `file "sites.yaml/.": not a clean relative path`)
		r = ops.run("", "release", "promote", id[:12])
		assert.Equal(t, 1, r.code, "refused at promote too")
		promoteAs(id, "--force")

		web2 := nodeAs("web2")
		proc := web2.start("agent", "--debounce", "0s", "--release-dir", filepath.Join(t.TempDir(), "releases"))
		defer func() { _ = proc.Process.Kill(); _, _ = proc.Process.Wait() }()
		refused := func() bool {
			p := presence("web2")
			return p != nil && strings.Contains(p.ReloadError, `file "sites.yaml/.": not a clean relative path`)
		}
		eventually(t, 60*time.Second, func() bool {
			_, err := os.Stat(marker)
			return err == nil || refused()
		}, "web2 refuses the release, or runs it")
		assert.NoFileExists(t, marker, "the hidden on_change never runs")
		assert.True(t, refused(), "web2 says why, naming the path")
		noFailure(t)
	})

	// 3, 4. The 0777 helper rewritten by nobody; the tampered chunk,
	// then agent restarts.
	t.Run("a staged release is root's, checked before each load, and outlives a broken copy in etcd", func(t *testing.T) {
		fresh()
		log := filepath.Join(t.TempDir(), "helper.log")
		require.NoError(t, os.WriteFile(log, nil, 0o666))
		require.NoError(t, os.Chmod(log, 0o666))
		dir := trustedDir(t, "", "on_change:\n  - [./check/helper]\n",
			map[string]string{"check/helper": fmt.Sprintf("#!/bin/sh\necho good >> %s\n", log)})
		id := pushAs(releaser, dir, "--sign-key", key)
		promoteAs(id)

		// A release directory every local user can reach.
		base := t.TempDir()
		require.NoError(t, os.Chmod(base, 0o755))
		require.NoError(t, os.Chmod(filepath.Dir(base), 0o755))
		releaseDir := filepath.Join(base, "releases")
		web3 := nodeAs("web3")
		start := func() *exec.Cmd {
			return web3.start("agent", "--debounce", "0s", "--release-dir", releaseDir, "--release-keys", keys)
		}
		stop := func(p *exec.Cmd) {
			require.NoError(t, p.Process.Signal(syscall.SIGTERM))
			_, _ = p.Process.Wait()
		}
		proc := start()
		convergedAt(t, "web3", objectChange("b"), id)
		// ccm.plan verifies with the agent's keys before it stages anything.
		unsigned := pushAs(releaser, trustedDir(t, "", "on_change:\n  - [sh, -c, 'echo evil >> "+log+"']\n", nil))
		r := ops.run("", "plan", "--cluster", "--release", unsigned[:12])
		assert.Regexp(t, `# node web3: no plan: .*release `+unsigned[:12]+` is not signed, and release keys are configured`, r.stdout)
		helper := filepath.Join(releaseDir, id, "check", "helper")
		info, err := os.Stat(helper)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o755), info.Mode(), "staged 0755 whatever the mode pushed")
		assert.Equal(t, uint32(0), info.Sys().(*syscall.Stat_t).Uid, "owned by root")
		out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", "echo 'echo evil >> "+log+"' >> "+helper).CombinedOutput()
		assert.Error(t, err, "nobody cannot rewrite a staged helper: %s", out)

		// Changed on disk anyway (by root, or before this version): the
		// agent stages it again at its next load, and never runs it.
		stop(proc)
		require.NoError(t, os.WriteFile(helper, []byte("#!/bin/sh\necho evil >> "+log+"\n"), 0o755))
		proc = start()
		convergedAt(t, "web3", objectChange("c"), id)
		raw, err := os.ReadFile(log)
		require.NoError(t, err)
		assert.NotContains(t, string(raw), "evil")
		assert.Contains(t, string(raw), "good")

		// The release writer breaks the copy in etcd; restarted, the node
		// runs its verified staged copy, says so, and raises no flag.
		for _, tc := range []struct {
			name, want, pushed string
			tamper             func()
		}{
			{"a chunk overwritten", "file sites.yaml: its content does not match its digest", "was stored and broken", func() {
				_, err := writer.Put(ctx, api.NewKeys("").ReleaseChunkKey(id, 1, 0), "subscribes: [sites]\non_change: [[sh, -c, 'echo evil >> "+log+"']]\n")
				require.NoError(t, err)
			}},
			{"its keys deleted", "no such release", "stored release", func() {
				_, err := writer.Delete(ctx, api.NewKeys("").ReleaseKey(id), clientv3.WithPrefix())
				require.NoError(t, err)
			}},
		} {
			stop(proc)
			tc.tamper()
			proc = start()
			eventually(t, 60*time.Second, func() bool {
				p := presence("web3")
				return p != nil && strings.Contains(p.ReleaseStoredError, tc.want)
			}, "%s: web3 reports the broken copy", tc.name)
			convergedAt(t, "web3", objectChange(tc.name[:1]), id)
			noFailure(t)
			r = ops.run("", "status")
			assert.Regexp(t, `web3\s+\S+\s+`+id[:12]+`.*stored release broken, running the staged copy: .*`+tc.want, r.stdout)
			r = ops.run("", "release", "verify", id[:12], "--release-keys", keys)
			assert.Equal(t, 1, r.code, "%s: %s", tc.name, r.stdout)
			assert.Contains(t, r.stderr, tc.want)

			r = releaser.run("", "release", "push", dir, "--sign-key", key)
			require.Equal(t, 0, r.code, r.stderr)
			assert.Contains(t, r.stderr, tc.pushed, "%s: push of the same directory repairs it", tc.name)
			r = ops.run("", "release", "verify", id[:12], "--release-keys", keys)
			assert.Equal(t, 0, r.code, "%s: %s", tc.name, r.stderr)
			assert.Contains(t, r.stdout, "is whole")
			convergedAt(t, "web3", objectChange(tc.name[:2]), id)
			eventually(t, 30*time.Second, func() bool { return presence("web3").ReleaseStoredError == "" },
				"%s: at its next run web3 finds the stored copy whole again", tc.name)
		}
		raw, err = os.ReadFile(log)
		require.NoError(t, err)
		assert.NotContains(t, string(raw), "evil")
		stop(proc)
	})

	// Attack review: the release writer strips the signature of the
	// promoted release. A node with no staged copy raised the flag and
	// halted every node; push said "nothing written"; an operator could
	// promote an unsigned release.
	t.Run("a stripped signature halts no node, push with the key restores it, promote with keys refuses unsigned", func(t *testing.T) {
		fresh()
		dir := trustedDir(t, "", "", map[string]string{"notes.txt": "stripped\n"})
		id := pushAs(releaser, dir, "--sign-key", key)
		promoteAs(id)
		stop := func(p *exec.Cmd) {
			require.NoError(t, p.Process.Signal(syscall.SIGTERM))
			_, _ = p.Process.Wait()
		}
		web1 := nodeAs("web1")
		held := web1.start("agent", "--debounce", "0s", "--release-dir", filepath.Join(t.TempDir(), "releases"), "--release-keys", keys)
		defer stop(held)
		convergedAt(t, "web1", objectChange("s1"), id)

		k := api.NewKeys("")
		resp, err := writer.Get(ctx, k.ReleaseKey(id))
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		var m releases.Release
		require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &m))
		m.Signature = ""
		raw, err := json.Marshal(&m)
		require.NoError(t, err)
		_, err = writer.Put(ctx, k.ReleaseKey(id), string(raw))
		require.NoError(t, err)

		web4 := nodeAs("web4") // never started before: no staged copy, no earlier presence
		fresh4 := web4.start("agent", "--debounce", "0s", "--release-dir", filepath.Join(t.TempDir(), "releases"), "--release-keys", keys)
		defer stop(fresh4)
		eventually(t, 60*time.Second, func() bool {
			p := presence("web4")
			return p != nil && strings.Contains(p.ReloadError, "is not signed, and release keys are configured")
		}, "web4, with no staged copy, reports the stripped signature as a load error")
		noFailure(t)
		convergedAt(t, "web1", objectChange("s2"), id)
		noFailure(t)

		r := ops.run("", "release", "verify", id[:12], "--release-keys", keys)
		assert.Equal(t, 1, r.code, r.stdout)
		assert.Contains(t, r.stderr, "push of the same directory with --sign-key restores its signature")
		r = releaser.run("", "release", "push", dir, "--sign-key", key)
		require.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stderr, "was stored and broken", "push with the key repairs the stripped signature")
		r = ops.run("", "release", "verify", id[:12], "--release-keys", keys)
		assert.Equal(t, 0, r.code, r.stderr)
		convergedAt(t, "web4", objectChange("s3"), id)
		noFailure(t)

		unsigned := pushAs(releaser, trustedDir(t, "", "", map[string]string{"notes.txt": "unsigned\n"}))
		for _, args := range [][]string{nil, {"--force"}} {
			r = ops.run("", append([]string{"release", "promote", unsigned[:12], "--release-keys", keys}, args...)...)
			assert.Equal(t, 1, r.code, "%v: %s", args, r.stdout)
			assert.Contains(t, r.stderr, "not promoted: release "+unsigned[:12]+" is not signed", "%v", args)
		}
		ops.env = append(ops.env, "CCM_RELEASE_KEYS="+keys)
		r = ops.run("", "release", "promote", unsigned[:12])
		ops.env = ops.env[:len(ops.env)-1]
		assert.Equal(t, 1, r.code, "CCM_RELEASE_KEYS too: %s", r.stdout)
	})

	// 7. A secret in a release was readable by every role that reads
	// the cluster.
	t.Run("push refuses a file that is not readable by everyone", func(t *testing.T) {
		dir := trustedDir(t, "", "", map[string]string{"db.password": "hunter2"})
		require.NoError(t, os.Chmod(filepath.Join(dir, "db.password"), 0o600))
		r := releaser.run("", "release", "push", dir)
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "db.password: mode 0600: not readable by everyone")
		assert.Contains(t, r.stderr, "holds no secrets")
	})
}
