package cluster_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// grant creates role r and a user of the same name with it, as the
// etcdctl commands of ccm rbac print do, and returns a client of that
// user. Auth is enabled once root exists.
func grant(t *testing.T, etcd *etcdtest.Cluster, r cluster.Role) *clientv3.Client {
	t.Helper()
	ctx := context.Background()
	root := etcd.Client(t)
	_, err := root.RoleAdd(ctx, r.Name)
	require.NoError(t, err)
	for _, p := range r.Permissions {
		end := ""
		if p.Prefix {
			end = clientv3.GetPrefixRangeEnd(p.Key)
		}
		typ := clientv3.PermissionType(map[string]int32{"read": int32(clientv3.PermRead), "write": int32(clientv3.PermWrite), "readwrite": int32(clientv3.PermReadWrite)}[p.Type])
		_, err = root.RoleGrantPermission(ctx, r.Name, p.Key, end, typ)
		require.NoError(t, err)
	}
	_, err = root.UserAdd(ctx, r.Name, "secret")
	require.NoError(t, err)
	_, err = root.UserGrantRole(ctx, r.Name, r.Name)
	require.NoError(t, err)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), Username: r.Name, Password: "secret"})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// enableAuth adds root and turns auth on; root's client is returned.
func enableAuth(t *testing.T, etcd *etcdtest.Cluster) *clientv3.Client {
	t.Helper()
	ctx := context.Background()
	cli := etcd.Client(t)
	_, err := cli.UserAdd(ctx, "root", "root")
	require.NoError(t, err)
	_, err = cli.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = cli.AuthEnable(ctx)
	require.NoError(t, err)
	root, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root"})
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	return root
}

// With a node's own role, the view is its own node with the cluster's
// flag, pause, release and lock, and says that it is partial. A role
// that may not read the cluster at all gets an error that names the role
// it needs, never a bare permission denied.
func TestANodesRoleViewsItsOwnNodeAndSaysTheViewIsPartial(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	k := api.NewKeys("")
	nodeCli := grant(t, etcd, cluster.NodeRole("", "web1"))
	releaser := grant(t, etcd, cluster.ReleaseRole("", "ci"))
	root := enableAuth(t, etcd)
	ctx := context.Background()
	for key, val := range map[string]string{
		k.StatusKey("web1"):  `{"result":"converged","converged_revision":3}`,
		k.StatusKey("web2"):  `{"result":"failed"}`,
		k.FailureKey("web2"): `{"error":"boom"}`,
		k.PausedKey():        `{"by":"alice","reason":"window"}`,
		k.LabelsKey("web1"):  `{"role":"web"}`,
		k.LabelsKey("web2"):  `{"role":"db"}`,
	} {
		_, err := root.Put(ctx, key, val)
		require.NoError(t, err)
	}

	v, err := cluster.New(nodeCli, cluster.Options{Node: "web1"}).View(ctx)
	require.NoError(t, err)
	require.Len(t, v.Nodes, 1)
	assert.Equal(t, "web1", v.Nodes[0].Name)
	assert.Equal(t, api.ResultConverged, v.Nodes[0].Status.Result)
	require.NotNil(t, v.Failure, "the flag another node raised")
	assert.Equal(t, "web2", v.Failure.Node)
	require.NotNil(t, v.Pause)
	assert.Contains(t, v.Partial, "only node web1")
	assert.Equal(t, map[string]string{"role": "web"}, v.Nodes[0].Labels, "the labels operators gave it")

	full, err := cluster.New(root, cluster.Options{Node: "web1"}).View(ctx)
	require.NoError(t, err)
	assert.Len(t, full.Nodes, 2)
	assert.Empty(t, full.Partial, "an identity that reads every node gets the whole view")
	assert.Equal(t, map[string]string{"role": "db"}, full.Nodes[1].Labels)

	_, err = cluster.New(nodeCli, cluster.Options{Node: "web2"}).View(ctx)
	require.Error(t, err, "another node's records are not web1's to read")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.Contains(t, err.Error(), "ccm rbac print --viewer")

	_, err = cluster.New(releaser, cluster.Options{Node: "ci"}).View(ctx)
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.Contains(t, err.Error(), "permission denied")
	assert.Contains(t, err.Error(), "needs read on the cluster's prefix (a viewer's role: ccm rbac print --viewer NAME)")
}
