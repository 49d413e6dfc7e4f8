package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

var update = flag.Bool("update", false, "rewrite golden files")

// ccm runs the CLI in-process and returns exit code, stdout and stderr.
func ccm(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// offline returns flags that plan the example under a fresh root.
func offline(t *testing.T) []string {
	root, state := t.TempDir(), t.TempDir()
	// The shells a declared user may have are the root's (accounts).
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/shells"), []byte("/bin/sh\n/bin/bash\n"), 0o644))
	return []string{"--config-dir", "../../examples/ccm", "--root", root, "--state-dir", state, "--log-level", "error"}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(p, []byte(got), 0o644))
	}
	want, err := os.ReadFile(p)
	require.NoError(t, err, "run go test ./cmd/ccm -update to create it")
	assert.Equal(t, string(want), got)
}

func TestPlanOfflineMatchesGoldenAndExits2(t *testing.T) {
	code, out, stderr := ccm(t, append(offline(t), "plan", "--objects", "../../examples/objects.json", "--color", "never")...)
	assert.Equal(t, exitChanges, code, stderr)
	golden(t, "plan-example.golden", out)
}

func TestPlanOneConfiguration(t *testing.T) {
	code, out, _ := ccm(t, append(offline(t), "plan", "--objects", "../../examples/objects.json", "--config", "crontab", "--color", "never")...)
	assert.Equal(t, exitChanges, code)
	assert.Contains(t, out, "+++ b/etc/cron.d/ccm-alice")
	assert.NotContains(t, out, "nginx")
	assert.True(t, strings.HasSuffix(out, "Plan: 2 to create, 0 to change, 0 to remove.\n"), out)
}

func TestPlanColoursOnlyWhenAsked(t *testing.T) {
	_, out, _ := ccm(t, append(offline(t), "plan", "--objects", "../../examples/objects.json", "--color", "always")...)
	assert.Contains(t, out, "\x1b[32m+[blog]\x1b[0m")
}

func TestPlanShowsHostileContentEscaped(t *testing.T) {
	objs := filepath.Join(t.TempDir(), "o.json")
	require.NoError(t, os.WriteFile(objs, []byte(`{"sites": {"evil": {"user": "x", "domains": ["a\u001b]0;owned\u0007.example"]}}}`), 0o644))
	// The example's schema stops it at the door, and says so escaped.
	code, _, errOut := ccm(t, append(offline(t), "plan", "--objects", objs, "--config", "nginx-vhosts", "--color", "never")...)
	assert.Equal(t, exitError, code)
	assert.NotContains(t, errOut, "\x1b")
	assert.Contains(t, errOut, `sites/evil: breaks schemas/sites.json at /domains/0`)

	// Without the schema, the example's template refuses it, and the plan
	// shows the quarantine escaped.
	dir := t.TempDir()
	entries, err := os.ReadDir("../../examples/ccm")
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() != "schemas" {
			abs, err := filepath.Abs(filepath.Join("../../examples/ccm", e.Name()))
			require.NoError(t, err)
			require.NoError(t, os.Symlink(abs, filepath.Join(dir, e.Name())))
		}
	}
	code, out, _ := ccm(t, append(offline(t), "--config-dir", dir, "plan", "--objects", objs, "--config", "nginx-vhosts", "--color", "never")...)
	assert.Equal(t, exitChanges, code)
	assert.NotContains(t, out, "\x1b")
	assert.Contains(t, out, `domain "a\x1b]0;owned\a.example" is not a hostname`)
}

func TestExitCodes(t *testing.T) {
	bad := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(bad, "a.yaml"), []byte("depends_on: [a]\nfiles: [{path: /a, content: a}]\n"), 0o644))
	objs := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(objs, []byte(`{"sites": {"x": "not an object"}}`), 0o644))

	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"validate ok", []string{"--config-dir", "../../examples/ccm", "validate"}, 0, ""},
		{"validate cycle", []string{"--config-dir", bad, "validate"}, 1, "dependency cycle: a -> a"},
		{"graph", []string{"--config-dir", "../../examples/ccm", "graph"}, 0, ""},
		{"plan bad objects", append(offline(t), "plan", "--objects", objs), 1, "object /ccm/objects/sites/x: value is a JSON string"},
		{"plan unknown config", append(offline(t), "plan", "--objects", "../../examples/objects.json", "--config", "nope"), 1, `configuration "nope": not found`},
		{"apply without --once", []string{"apply"}, 1, "apply needs --once"},
		{"bad object name", []string{"object", "get", "sites", "../x"}, 1, `id "../x": must match`},
		{"version", []string{"version"}, 0, ""},
		{"node with a slash", []string{"--node", "web1/x", "rbac", "print"}, 1, `--node "web1/x": must match [A-Za-z0-9][A-Za-z0-9._-]*`},
		{"empty node", []string{"--node", "", "rbac", "print"}, 1, `--node "": must match`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := ccm(t, tt.args...)
			assert.Equal(t, tt.code, code, stderr)
			assert.Contains(t, stderr, tt.stderr)
		})
	}
}

func TestGraphIsDOTInRunOrder(t *testing.T) {
	_, out, _ := ccm(t, "--config-dir", "../../examples/ccm", "graph")
	golden(t, "graph-example.golden", out)
}

func TestFlagsFallBackToEnvironment(t *testing.T) {
	t.Setenv("CCM_CONFIG_DIR", "../../examples/ccm")
	t.Setenv("CCM_LOG_LEVEL", "error")
	code, out, stderr := ccm(t, "validate")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "4 configurations OK")

	t.Setenv("CCM_CONFIG_DIR", "/nonexistent")
	code, _, _ = ccm(t, "--config-dir", "../../examples/ccm", "validate")
	assert.Equal(t, 0, code, "a flag on the command line beats the environment")

	t.Setenv("CCM_LOG_LEVEL", "loud")
	code, _, stderr = ccm(t, "validate")
	assert.Equal(t, 1, code)
	assert.Regexp(t, regexp.MustCompile(`--log-level: unrecognized level: "loud"`), stderr)
}

func TestRBACPrintGrantsOnlyTheNodesKeys(t *testing.T) {
	code, out, _ := ccm(t, "--prefix", "/prod", "rbac", "print", "--node", "web7")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "etcdctl role grant-permission --prefix=true ccm-node-web7 read /prod/objects/\n")
	assert.Contains(t, out, "etcdctl role grant-permission --prefix=true ccm-node-web7 readwrite /prod/nodes/web7/\n")
	assert.NotContains(t, out, "readwrite /prod/objects/", "nodes never write objects")
	assert.NotContains(t, out, "/prod/nodes/ ", "nor every node's keys")
}

func TestErrorsArePrintedOnePerLine(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("files:\n  - path: /x\n    content: x\n    mode: 0644\n    colour: red\n"), 0o644))
	code, _, stderr := ccm(t, "--config-dir", dir, "--log-level", "error", "validate")
	assert.Equal(t, 1, code)
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	require.Len(t, lines, 2, stderr)
	for _, l := range lines {
		assert.True(t, strings.HasPrefix(l, "ccm: "+dir+"/a.yaml: line "), "each error on its own line, naming the file: %q", l)
	}
	assert.NotContains(t, stderr, `\n`, "never a literal \\n")
}

// Every command builds and prints its help: a flag wired wrong panics
// when the command tree is made, and that would break every command.
func TestEveryCommandHasHelp(t *testing.T) {
	root := newRootCmd(&app{})
	var paths [][]string
	for _, c := range root.Commands() {
		paths = append(paths, []string{c.Name()})
		for _, sub := range c.Commands() {
			paths = append(paths, []string{c.Name(), sub.Name()})
		}
	}
	require.Greater(t, len(paths), 20)
	for _, p := range paths {
		code, out, errOut := ccm(t, append(p, "--help")...)
		assert.Equal(t, 0, code, "%v: %s", p, errOut)
		assert.Contains(t, out, "Usage:", p)
	}
}

// On a node, commands read /etc/default/ccm as the agent does: flags
// override the environment, which overrides the file.
func TestCommandsReadTheDefaultsFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ccm")
	require.NoError(t, os.WriteFile(file, []byte("# settings\n\nCCM_NODE=\"fromfile\"\nCCM_CONFIG_DIR='../../examples/ccm'\n"), 0o600))
	t.Setenv("CCM_DEFAULTS_FILE", file)
	code, out, stderr := ccm(t, "rbac", "print")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "for ccm node fromfile")
	code, _, stderr = ccm(t, "validate")
	assert.Equal(t, 0, code, "the configuration directory comes from the file: %s", stderr)

	t.Setenv("CCM_NODE", "fromenv")
	_, out, _ = ccm(t, "rbac", "print")
	assert.Contains(t, out, "for ccm node fromenv")
	_, out, _ = ccm(t, "--node", "fromflag", "rbac", "print")
	assert.Contains(t, out, "for ccm node fromflag")

	require.NoError(t, os.WriteFile(file, []byte("CCM_NODE=x\nnot a setting\n"), 0o600))
	code, _, stderr = ccm(t, "rbac", "print")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, file+":2: want NAME=VALUE")
}

// An empty CCM_RELEASE_KEYS in the environment does not hide the node's
// release keys in the defaults file (and so turn verification off): the
// command refuses, saying so.
func TestAnEmptyReleaseKeysVariableDoesNotTurnVerificationOff(t *testing.T) {
	defaults := filepath.Join(t.TempDir(), "ccm")
	require.NoError(t, os.WriteFile(defaults, []byte("CCM_RELEASE_KEYS=/etc/ccm/release_keys\n"), 0o644))
	t.Setenv("CCM_DEFAULTS_FILE", defaults)
	t.Setenv("CCM_RELEASE_KEYS", "")
	code, _, stderr := ccm(t, append(offline(t), "plan", "--objects", "../../examples/objects.json")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "CCM_RELEASE_KEYS is empty in the environment, and "+defaults+" sets it to /etc/ccm/release_keys: an empty value does not turn release verification off")

	code, _, stderr = ccm(t, append(offline(t), "--log-level", "error", "plan", "--objects", "../../examples/objects.json", "--release-keys", "")...)
	assert.Equal(t, exitChanges, code, "an explicit flag decides: %s", stderr)
}

// A defaults file this user cannot read may name the node's release keys:
// a command that loads a release refuses rather than run unverified (as a
// non-root operator's ccm plan --check --release did; root reads every
// file, so the unreadable file is given here as loadSettings finds it).
func TestAnUnreadableDefaultsFileDoesNotTurnVerificationOff(t *testing.T) {
	a := &app{settings: settings{path: "/etc/default/ccm", unreadable: true}, log: zap.NewNop()}
	verify, err := a.releaseVerifier("")
	require.Error(t, err)
	assert.Nil(t, verify)
	assert.Contains(t, err.Error(), "/etc/default/ccm cannot be read by this user")
	a.settings.unreadable = false
	verify, err = a.releaseVerifier("")
	assert.NoError(t, err, "no defaults file at all: no keys, with the warning")
	assert.Nil(t, verify)
}
