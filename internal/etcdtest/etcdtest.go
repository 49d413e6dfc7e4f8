// Package etcdtest starts real etcd clusters inside a test process: embedded
// members on 127.0.0.1 random ports, with short election timeouts.
package etcdtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Cluster is a running embedded etcd cluster.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	members []*member
}

type member struct {
	name           string
	dir            string
	client, peer   url.URL
	initialCluster string
	etcd           *embed.Etcd
}

// New starts an n-member cluster and stops it when the test ends.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	for try := 1; ; try++ {
		c, err := start(t, n)
		// A port FreeAddr found free can be taken by another process (a
		// test binary of another package) before the member binds it:
		// new ports, and new data directories, then.
		if err != nil && strings.Contains(err.Error(), "address already in use") && try < 5 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// start starts an n-member cluster on fresh ports and directories. On
// error, every member it started is stopped again.
func start(t testing.TB, n int) (*Cluster, error) {
	t.Helper()
	c := &Cluster{t: t}
	var initial []string
	for i := 0; i < n; i++ {
		m := &member{
			name:   fmt.Sprintf("m%d", i),
			dir:    t.TempDir(),
			client: url.URL{Scheme: "http", Host: FreeAddr(t)},
			peer:   url.URL{Scheme: "http", Host: FreeAddr(t)},
		}
		initial = append(initial, m.name+"="+m.peer.String())
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initialCluster = strings.Join(initial, ",")
	}
	// Members start concurrently: none is ready before a quorum is up.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.start("new")
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	t.Cleanup(c.Close)
	return c, nil
}

// FreeAddr returns a 127.0.0.1 address with a port no one listened on just
// now. The port is below the kernel's ephemeral range (32768 and up on
// Linux), so no outgoing connection takes it between this check and the
// listen, and each test binary walks its own random sequence of ports, so
// parallel tests and packages do not pick the same one.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range portSpan {
		port := portBase + int(nextPort.Add(1))%portSpan
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("no free port on 127.0.0.1")
	return ""
}

// The ports FreeAddr hands out: [portBase, portBase+portSpan).
const portBase, portSpan = 20000, 12000

// nextPort is where this binary's walk through the ports is.
var nextPort = func() *atomic.Int32 {
	var n atomic.Int32
	n.Store(rand.Int32N(portSpan))
	return &n
}()

// start starts the member; m.etcd is set under no lock: callers start a
// member only while it is stopped.
func (m *member) start(state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{m.client}, []url.URL{m.client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{m.peer}, []url.URL{m.peer}
	cfg.InitialCluster = m.initialCluster
	cfg.ClusterState = state
	cfg.TickMs, cfg.ElectionMs = 25, 250
	cfg.MaxRequestBytes = 16 << 20 // objects of several MB
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("start %s: %w", m.name, err)
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("start %s: not ready after 30s", m.name)
	}
	m.etcd = e
	return nil
}

// Endpoints returns every member's client address (host:port).
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client.Host)
	}
	return eps
}

// Endpoint returns member i's client address.
func (c *Cluster) Endpoint(i int) string { return c.members[i].client.Host }

// Client returns a client of the given members (all when none is given),
// closed when the test ends.
func (c *Cluster) Client(t testing.TB, members ...int) *clientv3.Client {
	t.Helper()
	eps := c.Endpoints()
	if len(members) > 0 {
		eps = nil
		for _, i := range members {
			eps = append(eps, c.Endpoint(i))
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		MaxCallSendMsgSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops member i, keeping its data.
func (c *Cluster) Stop(i int) { c.stopMember(i) }

func (c *Cluster) stopMember(i int) {
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts stopped members again with their data, concurrently, as
// a member that lost quorum is ready only when enough others are back.
func (c *Cluster) Restart(members ...int) {
	var wg sync.WaitGroup
	errs := make([]error, len(members))
	for k, i := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := c.members[i]
			errs[k] = m.start("existing")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// Size returns the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// Close stops every member, concurrently: a member stopped alone waits
// for the others to take over its leadership.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stopMember(i)
		}()
	}
	wg.Wait()
}
