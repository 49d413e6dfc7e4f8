package test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// A site whose file a certificate makes fail its check is quarantined at
// the site's revision. Deleting the certificate runs the configuration
// for another change: the node that recorded the quarantine tries the
// site again, renders and checks it clean, writes it and lifts the
// record, though the site itself never changed.
func TestAQuarantineCausedByAnotherObjectLiftsWhenThatObjectGoes(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte(`subscribes: [sites, certificates]
files:
  - path: /sites/{{ .Object.ID }}.conf
    for_each: sites
    content: "{{ .Object.Data.v }}{{ range .Objects.certificates }}{{ if eq .Data.site $.Object.ID }} {{ .Data.pem }}{{ end }}{{ end }}\n"
    check: [sh, -c, 'if grep -q bad "$0"; then echo "bad certificate in $0" >&2; exit 1; fi', "{{ .Staged }}"]
`), 0o644))
	rev := putSites(t, etcd, 3, "a")
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, rev, api.ResultConverged)
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	resp, err := cli.Put(context.Background(), "/ccm/objects/certificates/c1", `{"site":"s001","pem":"bad"}`)
	require.NoError(t, err)
	n.reported(t, resp.Header.Revision, api.ResultConverged)
	qs, err := c.Quarantines(context.Background())
	require.NoError(t, err)
	require.Len(t, qs, 1)
	assert.Equal(t, "sites/s001", qs[0].Object())
	assert.Equal(t, "a\n", n.read("/sites/s001.conf"), "the last good file stays")

	del, err := cli.Delete(context.Background(), "/ccm/objects/certificates/c1")
	require.NoError(t, err)
	s := n.reported(t, del.Header.Revision, api.ResultConverged)
	assert.Empty(t, s.Quarantined, "the site is held no more")
	eventually(t, 10*time.Second, func() bool {
		qs, err := c.Quarantines(context.Background())
		return err == nil && len(qs) == 0
	}, "the record is lifted")
	assert.Equal(t, "a\n", n.read("/sites/s001.conf"))
}

// A malformed object is quarantined by the configuration that reads its
// type, never by another one of the run: the trial found crons/a ({not
// json) recorded under motd, which reads no crons.
func TestAMalformedObjectIsQuarantinedByTheConfigurationThatReadsIt(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "motd.yaml"), []byte("files:\n  - {path: /etc/motd, content: \"hello\\n\"}\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sites.yaml"), []byte("subscribes: [sites]\nfiles:\n  - {path: '/sites/{{ .Object.ID }}.conf', for_each: sites, content: \"{{ .Object.Data.v }}\\n\"}\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "crons.yaml"), []byte("subscribes: [crons]\nfiles:\n  - {path: '/crons/{{ .Object.ID }}', for_each: crons, content: \"{{ .Object.Data.v }}\\n\"}\n"), 0o644))
	putSites(t, etcd, 2, "a")
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{})
	var rev int64
	for _, kv := range [][2]string{{"crons/ok", `{"v":"1"}`}, {"crons/a", `{not json`}} {
		resp, err := cli.Put(context.Background(), "/ccm/objects/"+kv[0], kv[1])
		require.NoError(t, err)
		rev = resp.Header.Revision
	}
	// The agent's first run is a full run: every configuration, motd first.
	n := startAgent(t, etcd, "web1", dir, agentConfig{})
	n.reported(t, rev, api.ResultConverged)
	qs, err := c.Quarantines(context.Background())
	require.NoError(t, err)
	require.Len(t, qs, 1)
	assert.Equal(t, "crons/a", qs[0].Object())
	assert.Equal(t, "crons", qs[0].Configuration)
	assert.Equal(t, "1\n", n.read("/crons/ok"))
}
