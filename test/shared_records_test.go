package test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// The attacks of a node whose etcd credentials were stolen, against
// Debian's etcd with TLS and auth and the roles `ccm rbac print` prints:
// it may stop the rollout with its own records, but it cannot block,
// release, fail, resume or approve for another node, nor make one look
// guilty.
func TestOneNodesCredentialsCannotBlockForgeOrClearForAnother(t *testing.T) {
	e := etcdtest.StartExternal(t)
	e.EnableAuth("root-secret")
	admin := nodeOn(t, e, "admin", "root", "root-secret")
	for _, n := range []string{"web1", "web2", "web3"} {
		grantNodeRole(t, e, admin, n, n+"-secret")
	}
	r := admin.run("", "object", "import", "../examples/objects.json")
	require.Equal(t, 0, r.code, r.stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := rootClient(t, e)
	evil := externalClient(t, e, "ccm-node-web1", "web1-secret") // web1's stolen credentials
	// A node's own Cluster, on its own role.
	nodeCluster := func(name string) *cluster.Cluster {
		return cluster.New(externalClient(t, e, "ccm-node-"+name, name+"-secret"), cluster.Options{Node: name})
	}
	web2, web3 := nodeCluster("web2"), nodeCluster("web3")
	view := func(t *testing.T) cluster.View {
		t.Helper()
		r := admin.run("", "status", "--json")
		var v cluster.View
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &v), r.stderr)
		return v
	}
	denied := func(t *testing.T, err error, what string) {
		t.Helper()
		assert.ErrorContains(t, err, "permission denied", what)
	}
	session := func(t *testing.T, c *cluster.Cluster) *cluster.Session {
		t.Helper()
		s, err := c.NewSession(ctx, cluster.SessionOptions{TTL: 30 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}

	t.Run("a forged lock key blocks no one and blames no one", func(t *testing.T) {
		_, err := evil.Put(ctx, "/ccm/lock/0000-forged", "web2 running")
		denied(t, err, "the old attack: a key at the root of the queue")
		_, err = evil.Put(ctx, "/ccm/lock/web2/0000", `{"held_since":"2026-01-01T00:00:00Z"}`)
		denied(t, err, "a key under another node's name")
		// What its role does let it write, its own key on no lease, and
		// what only an operator could write now, the old forged key:
		// neither counts.
		for _, key := range []string{"/ccm/lock/web1/0000-forged", "/ccm/lock/web1/0"} {
			_, err = evil.Put(ctx, key, `{"held_since":"2026-01-01T00:00:00Z"}`)
			require.NoError(t, err)
		}
		_, err = root.Put(ctx, "/ccm/lock/0000-forged", "web2 running")
		require.NoError(t, err)
		defer root.Delete(ctx, "/ccm/lock/", clientv3.WithPrefix())

		v := view(t)
		assert.Empty(t, v.Holders, "no holder is named for keys on no lease")
		assert.Empty(t, v.Waiting)
		r := nodeOn(t, e, "web2", "ccm-node-web2", "web2-secret").run("", "apply", "--once", "--lock-timeout", "20s")
		require.Equal(t, 0, r.code, "web2 converges past the forged keys: %s", r.stderr)

		// It can always hold its own lock, on a lease of its own: then the
		// rollout stops, and ccm status names it, not another node.
		lease, err := evil.Grant(ctx, 60)
		require.NoError(t, err)
		_, err = evil.Put(ctx, web2.LockKey("web1", fmt.Sprintf("%x", lease.ID)), `{"held_since":"2026-01-01T00:00:00Z"}`, clientv3.WithLease(lease.ID))
		require.NoError(t, err)
		assert.Equal(t, []string{"web1"}, view(t).Holders)
		_, err = evil.Revoke(ctx, lease.ID)
		require.NoError(t, err)
	})

	t.Run("an operator evicts a holder with ccm lock break", func(t *testing.T) {
		s2 := session(t, web2)
		held, err := s2.Lock(ctx, nil)
		require.NoError(t, err)
		defer held.Release()
		r := admin.run("", "lock", "break", "web2")
		assert.Equal(t, 1, r.code, "no terminal to confirm at, and no --yes")
		assert.Regexp(t, `Node web2 holds the lock since \S+ \(for \d+s\): key /ccm/lock/web2/`+s2.Lease(), r.stdout)
		assert.Contains(t, r.stderr, "--yes")
		require.NoError(t, held.Fence(), "nothing was broken")

		r = admin.run("", "lock", "break", "web2", "--yes")
		require.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stdout, "Broke 1 lock key(s) of node web2.")
		eventually(t, 10*time.Second, func() bool { return held.Fence() != nil }, "the evicted holder's fence closes")
		assert.ErrorIs(t, held.Fence(), cluster.ErrLockLost)
		other, err := session(t, web3).Lock(ctx, nil)
		require.NoError(t, err, "the next node takes the lock")
		require.NoError(t, other.Release())
		r = admin.run("", "lock", "break", "web2", "--yes")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "node web2 neither holds nor waits for the lock")
	})

	t.Run("no node can release, revoke or take another's lock", func(t *testing.T) {
		s2 := session(t, web2)
		held, err := s2.Lock(ctx, nil)
		require.NoError(t, err)
		defer held.Release()
		key := web2.LockKey("web2", s2.Lease())
		_, err = evil.Delete(ctx, key)
		denied(t, err, "another node's lock key")
		_, err = evil.Delete(ctx, "/ccm/lock/", clientv3.WithPrefix())
		denied(t, err, "the whole queue")
		_, err = evil.Revoke(ctx, leaseID(t, s2.Lease()))
		denied(t, err, "another node's lease (its keys are not the attacker's to delete)")
		assert.NoError(t, held.Fence(), "web2 still holds its slot")

		// web3 queues behind it and is not let in.
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		defer wcancel()
		_, err = session(t, web3).Lock(wctx, nil)
		assert.ErrorIs(t, err, context.DeadlineExceeded, "web2 holds the only slot")
		v := view(t)
		assert.Equal(t, []string{"web2"}, v.Holders)

		// The known limit (docs/RELIABILITY.md): etcd does not authorise
		// keep-alives, so a node can keep another's lease alive; ccm lock
		// break is the remedy, and nothing trusts a lease's TTL.
		_, err = evil.KeepAliveOnce(ctx, leaseID(t, s2.Lease()))
		assert.NoError(t, err, "etcd lets any user keep any lease alive")
	})

	t.Run("no node can raise, clear or shift the blame of another's failure", func(t *testing.T) {
		for _, key := range []string{"/ccm/failure/web2", "/ccm/failure"} {
			_, err := evil.Put(ctx, key, `{"node":"web2","error":"forged"}`)
			denied(t, err, key)
		}
		_, err := web2.Client().Put(ctx, web2.FailureKey("web2"), `{"node":"web2","configuration":"nginx-vhosts","error":"real"}`)
		require.NoError(t, err, "web2 records its own failure")
		_, err = evil.Delete(ctx, "/ccm/failure/web2")
		denied(t, err, "another node's failure record")
		_, err = evil.Delete(ctx, "/ccm/failure", clientv3.WithPrefix())
		denied(t, err, "every failure record")
		r := nodeOn(t, e, "web1", "ccm-node-web1", "web1-secret").run("", "resume")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "permission denied", "a node cannot resume")

		// Its own record may say anything; it is its own.
		_, err = evil.Put(ctx, "/ccm/failure/web1", `{"node":"web3","configuration":"nginx-vhosts","error":"web3 broke it"}`)
		require.NoError(t, err)
		v := view(t)
		var by []string
		for _, f := range v.Failures {
			by = append(by, f.Node)
		}
		assert.ElementsMatch(t, []string{"web1", "web2"}, by, "each record blames the node that wrote it")
		r = admin.run("", "status")
		assert.Contains(t, r.stdout, "SET by node web1")
		assert.NotContains(t, r.stdout, "by node web3")

		r = admin.run("", "resume")
		require.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stdout, "was set by node web1")
		assert.Contains(t, r.stdout, "was set by node web2")
		assert.Empty(t, view(t).Failures, "ccm resume clears every record")
	})

	t.Run("a forged canary record never turns the canary off", func(t *testing.T) {
		r := admin.run("", "rollout", "set", "--batch", "3", "--canary")
		require.Equal(t, 0, r.code, r.stderr)
		defer admin.run("", "rollout", "set", "--batch", "1")
		for _, key := range []string{"/ccm/canary", "/ccm/canary/web2"} {
			_, err := evil.Put(ctx, key, `{"revision":9223372036854775807}`)
			denied(t, err, key)
		}
		_, err := evil.Put(ctx, "/ccm/canary/web1", `{"node":"web2","revision":9223372036854775807}`)
		require.NoError(t, err, "its own record")
		v := view(t)
		assert.Nil(t, v.Canary, "a record that approves a change from the future approves nothing")
		r = admin.run("", "status")
		assert.Contains(t, r.stdout, "no canary converged a change yet")

		// The next change still runs on one canary alone.
		put, err := root.Put(ctx, "/ccm/objects/sites/canary-probe", `{"user":"alice","domains":["probe.example"]}`)
		require.NoError(t, err)
		change := func() int64 { return put.Header.Revision }
		s2 := session(t, web2)
		canary, err := s2.Lock(ctx, change)
		require.NoError(t, err)
		defer canary.Release()
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		defer wcancel()
		s3 := session(t, web3)
		_, err = s3.Lock(wctx, change)
		require.ErrorIs(t, err, context.DeadlineExceeded, "a batch of 3, but the canary runs alone")

		// Once the canary reports its change converged, the batch opens,
		// while the canary still holds its slot.
		require.NoError(t, canary.WriteStatus(ctx, api.Status{Node: "web2", Result: api.ResultConverged, Revision: change(), Converged: change(), Time: time.Now()}))
		other, err := s3.Lock(ctx, change)
		require.NoError(t, err)
		defer other.Release()
		v = view(t)
		require.NotNil(t, v.Canary)
		assert.Equal(t, api.Canary{Node: "web2", Revision: change()}, *v.Canary)
		assert.ElementsMatch(t, []string{"web2", "web3"}, v.Holders)
	})
}

// leaseID parses a lease as presence records and lock keys show it (hex).
func leaseID(t *testing.T, hex string) clientv3.LeaseID {
	t.Helper()
	id, err := strconv.ParseInt(hex, 16, 64)
	require.NoError(t, err)
	return clientv3.LeaseID(id)
}
