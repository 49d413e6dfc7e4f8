// Package test holds the integration tests: the ccm binary and its packages
// against real etcd clusters started by etcdtest.
package test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ccm-dev/ccm/internal/leaktest"
)

// ccmBin is the ccm binary built for these tests.
var ccmBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The inner loop (go test -short ./...) runs the packages' own
		// tests; these start etcd clusters and agents for minutes.
		fmt.Println("skipping the integration tests in -short mode")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "ccm-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ccmBin = filepath.Join(dir, "ccm")
	// failpoints: CCM_CRASH_AT=<step> SIGKILLs the binary at a step of a run.
	build := exec.Command("go", "build", "-tags", "failpoints", "-o", ccmBin, "./cmd/ccm")
	build.Dir = ".." // the agent's module
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ccm:", err)
		os.Exit(1)
	}
	// The example's checks run the real nginx -t and php-fpm -t, which
	// reject its sample objects on a test machine (no certificate files,
	// no user alice). Tests that mean to run them set CHECK_SKIP=0.
	os.Setenv("CHECK_SKIP", "1")
	// The machine's /etc/default/ccm is not the tests' business.
	os.Setenv("CCM_DEFAULTS_FILE", "")
	code := m.Run()
	// No goroutine outlives its test: agents, watchers, sessions and
	// embedded etcd members all stop.
	if code == 0 {
		leaktest.Check()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is one ccm node: its own name, root and state directory.
type node struct {
	t         *testing.T
	name      string
	root      string
	state     string
	configDir string
	endpoints []string
	flags     []string // extra global flags (TLS, user)
	env       []string // extra environment (CCM_PASSWORD)
}

func newNode(t *testing.T, name, configDir string, endpoints []string) *node {
	return &node{t: t, name: name, root: newRoot(t), state: stateDir(t), configDir: configDir, endpoints: endpoints}
}

// baseAccounts are the account files a node's root starts with: the
// example creates its customers' users with useradd --prefix <root>.
var baseAccounts = map[string]string{
	"passwd":  "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	"group":   "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
	"shadow":  "root:*:1::::::\nwww-data:*:1::::::\nnobody:*:1::::::\n",
	"gshadow": "root:*::\nwww-data:*::\nnogroup:*::\n",
	// The shells a declared user may have (accounts: the typed boundary).
	"shells": "/bin/sh\n/bin/bash\n",
}

// newRoot is a node's --root, with its own /etc account files.
func newRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range baseAccounts {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// result is what one ccm invocation did.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the ccm binary as this node.
func (n *node) run(stdin string, args ...string) result {
	n.t.Helper()
	base := []string{
		"--endpoints", strings.Join(n.endpoints, ","), "--root", n.root,
		"--state-dir", n.state, "--config-dir", n.configDir, "--log-format", "json",
	}
	if n.name != "" { // ccm action run takes --node as a target
		base = append(base, "--node", n.name)
	}
	cmd := exec.Command(ccmBin, append(append(base, n.flags...), args...)...)
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		n.t.Fatalf("run ccm %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// tree returns every file under dir with its mode and content.
// The account files newRoot seeds are the tools' (useradd and its
// relatives write them, with backups ending in -), so tree leaves them
// out: what ccm writes is the rest.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		if _, seeded := baseAccounts[strings.TrimSuffix(filepath.Base(p), "-")]; seeded && filepath.Dir(p) == filepath.Join(dir, "etc") {
			return nil
		}
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, dir)] = fi.Mode().String() + " " + string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// copyDir copies the example configuration so a test can edit it,
// following symbolic links.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if err := copyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

func copyTree(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		fi, err := os.Stat(from) // follows links
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if err := os.MkdirAll(to, 0o755); err != nil {
				return err
			}
			if err := copyTree(from, to); err != nil {
				return err
			}
			continue
		}
		b, err := os.ReadFile(from)
		if err != nil {
			return err
		}
		if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}
