package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildDeb builds the agent binary and its package at version into dir,
// as make deb does, and returns the package's path.
func buildDeb(t *testing.T, dir, version string) string {
	t.Helper()
	bin := filepath.Join(dir, "ccm-agent-"+version)
	build := exec.Command("go", "build", "-tags", "noembed", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/ccm")
	build.Dir = ".."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	packager := filepath.Join(dir, "ccm-deb")
	build = exec.Command("go", "-C", "packaging/deb", "build", "-o", packager, ".") // a module of its own
	build.Dir = ".."
	out, err = build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	pkg := exec.Command(packager, "-bin", bin, "-version", version, "-out", dir)
	pkg.Dir = ".."
	out, err = pkg.Output()
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

// dpkgRoot is a dpkg database in a directory: packages install there, with
// their maintainer scripts, without touching the machine.
type dpkgRoot struct {
	t    *testing.T
	root string
}

func newDpkgRoot(t *testing.T) *dpkgRoot {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg on this machine")
	}
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		require.NoError(t, os.WriteFile(filepath.Join(root, f), nil, 0o644))
	}
	return &dpkgRoot{t: t, root: root}
}

func (d *dpkgRoot) dpkg(args ...string) string {
	d.t.Helper()
	base := []string{"--root=" + d.root, "--force-script-chrootless", "--force-not-root", "--log=/dev/null", "--force-confold"}
	out, err := exec.Command("dpkg", append(base, args...)...).CombinedOutput()
	require.NoError(d.t, err, "dpkg %v: %s", args, out)
	return string(out)
}

func (d *dpkgRoot) path(p string) string { return filepath.Join(d.root, p) }

func (d *dpkgRoot) ccm(args ...string) string {
	d.t.Helper()
	out, err := exec.Command(d.path("/usr/bin/ccm"), args...).CombinedOutput()
	require.NoError(d.t, err, "ccm %v: %s", args, out)
	return string(out)
}

func TestDebianPackageInstallsUpgradesAndRemoves(t *testing.T) {
	d := newDpkgRoot(t)
	dir := t.TempDir()
	v1, v2 := buildDeb(t, dir, "1.0.0"), buildDeb(t, dir, "1.1.0")
	assert.Equal(t, "ccm_1.0.0_amd64.deb", filepath.Base(v1), "the conventional file name")

	d.dpkg("-i", v1)
	assert.Contains(t, d.ccm("version"), "ccm 1.0.0")
	assert.Contains(t, d.ccm("validate", "--config-dir", d.path("/etc/ccm")), "no configurations yet", "a fresh /etc/ccm validates")
	for path, mode := range map[string]os.FileMode{
		"/usr/bin/ccm": 0o755, "/lib/systemd/system/ccm.service": 0o644, "/etc/default/ccm": 0o600,
		"/etc/ccm/README": 0o644, "/var/lib/ccm": os.ModeDir | 0o700,
	} {
		st, err := os.Stat(d.path(path))
		require.NoError(t, err, path)
		assert.Equal(t, mode, st.Mode(), path)
	}
	unit, err := os.ReadFile(d.path("/lib/systemd/system/ccm.service"))
	require.NoError(t, err)
	assert.Contains(t, string(unit), "ExecStart=/usr/bin/ccm agent")
	assert.Contains(t, string(unit), "EnvironmentFile=-/etc/default/ccm")
	conffiles, err := os.ReadFile(d.path("/var/lib/dpkg/info/ccm.conffiles"))
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"/etc/default/ccm", "/etc/ccm/README"}, strings.Fields(string(conffiles)))
	out, err := exec.Command(d.path("/usr/bin/ccm"), "status", "--embedded-etcd", t.TempDir()).CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(out), "built without the etcd server", "the node build has no etcd server")

	// An upgrade keeps the operator's settings.
	settings := "CCM_ENDPOINTS=https://etcd1:2379\n"
	require.NoError(t, os.WriteFile(d.path("/etc/default/ccm"), []byte(settings), 0o600))
	d.dpkg("-i", v2)
	assert.Contains(t, d.ccm("version"), "ccm 1.1.0")
	got, err := os.ReadFile(d.path("/etc/default/ccm"))
	require.NoError(t, err)
	assert.Equal(t, settings, string(got), "a local edit survives the upgrade")

	// Remove keeps the configuration; purge takes it and the state.
	d.dpkg("-r", "ccm")
	assert.NoFileExists(t, d.path("/usr/bin/ccm"))
	assert.FileExists(t, d.path("/etc/default/ccm"), "remove keeps conffiles")
	d.dpkg("--purge", "ccm")
	assert.NoFileExists(t, d.path("/etc/default/ccm"))
	assert.NoDirExists(t, d.path("/var/lib/ccm"))
}
