package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/metrics"
)

// vhostYAML is the example's nginx configuration, one file per site.
const vhostYAML = `subscribes: [sites, certificates]
files:
  - path: /etc/nginx/sites-enabled/{{ .Object.ID }}.conf
    for_each: sites
    template: vhost.conf.tmpl
`

func (b *bench) client() (*clientv3.Client, error) {
	return cluster.NewClient(cluster.ClientConfig{Endpoints: []string{b.etcdURL}})
}

// siteValue is one site object.
func siteValue(i int, domain string) string {
	return fmt.Sprintf(`{"user":"u%d","domains":[%q,"www.%s"]}`, i, domain, domain)
}

// sites connects and puts n sites under prefix (site i has the domain
// s<i>.example); the caller closes the client.
func (b *bench) sites(prefix string, n int) (*clientv3.Client, error) {
	cli, err := b.client()
	if err != nil {
		return nil, err
	}
	if err := b.load(cli, prefix, "sites", n, func(i int) string { return siteValue(i, fmt.Sprintf("s%d.example", i)) }); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
}

// load puts n objects of typ under prefix, 100 per transaction.
func (b *bench) load(cli *clientv3.Client, prefix, typ string, n int, value func(int) string) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := cli.Txn(b.ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for i := 0; i < n; i++ {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s/objects/%s/%s%06d", prefix, typ, typ[:1], i), value(i)))
		if len(ops) == 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// configDir writes a configuration directory with the example's vhost
// template and the given files.
func (b *bench) configDir(name string, files map[string]string) (string, error) {
	dir := filepath.Join(b.work, name, "config")
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		return "", err
	}
	tmpl, err := os.ReadFile("examples/ccm/templates/vhost.conf.tmpl")
	if err != nil {
		return "", err
	}
	files["templates/vhost.conf.tmpl"] = string(tmpl)
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// runningAgent is an agent in this process.
type runningAgent struct {
	ag     *agent.Agent
	root   string
	cancel context.CancelFunc
	done   chan error
	cli    *clientv3.Client
}

func (b *bench) startAgent(name, prefix, configDir string, debounce, maxWait time.Duration) (*runningAgent, error) {
	cli, err := b.client()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(b.work, name, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	ag, err := agent.New(agent.Options{
		Client: cli, Prefix: prefix, Node: name, ConfigDir: configDir,
		Root: root, StateDir: filepath.Join(b.work, name, "state"),
		Debounce: debounce, MaxWait: maxWait, LockTTL: 30 * time.Second,
		Logger: zap.NewNop(), Metrics: metrics.New(),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(b.ctx)
	r := &runningAgent{ag: ag, root: root, cancel: cancel, done: make(chan error, 1), cli: cli}
	go func() { r.done <- ag.Run(ctx) }()
	return r, nil
}

func (r *runningAgent) stop() {
	r.cancel()
	<-r.done
	r.cli.Close()
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		time.Sleep(interval)
	}
	return nil
}

// countFiles counts the regular files directly in dir.
func countFiles(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if e.Type().IsRegular() {
			n++
		}
	}
	return n
}
