package embedded_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/internal/embedded"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// start starts the member on a free port: a port freePort found can be
// taken by another test's process before the member binds it, so it tries
// another one then.
func start(t *testing.T, ctx context.Context, dir string) (*embedded.Server, string) {
	t.Helper()
	for try := 0; ; try++ {
		addr := freePort(t)
		srv, err := embedded.Start(ctx, embedded.Config{Dir: dir, ClientURL: "http://" + addr})
		if err != nil && strings.Contains(err.Error(), "address already in use") && try < 10 {
			continue
		}
		require.NoError(t, err)
		return srv, addr
	}
}

func TestDataSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	put := func(cli *clientv3.Client) {
		_, err := cli.Put(ctx, "/ccm/objects/sites/a", `{}`)
		require.NoError(t, err)
	}
	for i, step := range []func(*clientv3.Client){put, func(cli *clientv3.Client) {
		resp, err := cli.Get(ctx, "/ccm/objects/sites/a")
		require.NoError(t, err)
		assert.Len(t, resp.Kvs, 1, "the object is still there after a restart")
	}} {
		srv, addr := start(t, ctx, dir)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second})
		require.NoError(t, err, "step %d", i)
		require.NoError(t, err)
		step(cli)
		cli.Close()
		srv.Close()
	}
}

func TestStartRejectsABadURL(t *testing.T) {
	_, err := embedded.Start(context.Background(), embedded.Config{Dir: t.TempDir(), ClientURL: "127.0.0.1"})
	assert.ErrorContains(t, err, `client URL "127.0.0.1": want http://host:port`)
}
