package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// The Python reference client (contrib/python) passes its tests against
// a real etcd and a real agent, on Debian's python3-cryptography and
// python3-jsonschema alone: objects checked by the schemas, a signed call
// with a secret parameter sealed to the node, a reply sealed to the
// caller, and a request withdrawn when no node picks it up.
func TestThePythonClientPassesItsTests(t *testing.T) {
	t.Parallel()
	if err := exec.Command("/usr/bin/python3", "-c", "import cryptography, jsonschema").Run(); err != nil {
		t.Skip("Debian's python3-cryptography and python3-jsonschema not installed (.ci/run installs them)")
	}
	etcd := etcdtest.New(t, 1)
	signKey, pub := sshKey(t, "python-api@example")
	authorized := filepath.Join(t.TempDir(), "authorized_keys")
	require.NoError(t, os.WriteFile(authorized, []byte(`ccm-actions="whoami,login-url" `+pub), 0o644))
	dir := actionConfig(t, map[string]string{
		"whoami":    "command: [BIN/whoami]\nparams: {pw: {secret: true}}\nrun_as: {user: ME}\n",
		"login-url": "command: [BIN/login]\nrun_as: {user: ME}\nsecret_output: true\n",
	}, map[string]string{
		"whoami": `read -r line; case "$line" in *'"pw":"hunter2"'*) echo got-it;; *) echo missing;; esac` + "\n",
		"login":  "echo https://shop.example/login?token=tok-$CCM_ACTION_ID\n",
	})
	n := newNode(t, "web1", dir, etcd.Endpoints())
	n.start("agent", "--debounce", "0s", "--action-keys", authorized)
	c := cluster.New(etcd.Client(t), cluster.Options{})
	eventually(t, 30*time.Second, func() bool { return nodeView(t, c, "web1").Presence != nil }, "the agent is alive")

	cmd := exec.Command("/usr/bin/python3", "-m", "unittest", "-v", "test_ccm")
	cmd.Dir = "../contrib/python"
	schemas, err := filepath.Abs("../examples/ccm/schemas")
	require.NoError(t, err)
	cmd.Env = append(os.Environ(), "CCM_ENDPOINT=http://"+etcd.Endpoint(0), "CCM_SCHEMAS="+schemas, "CCM_SIGN_KEY="+signKey,
		"PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NotContains(t, string(out), "skipped", "every test ran: %s", out)
}
