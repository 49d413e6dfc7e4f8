package client_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/embedded"
)

// Call an action on one node and print its reply. The node here is an
// agent in this process, with an embedded etcd; in production the cluster
// API talks to the etcd cluster its nodes use.
func Example() {
	cli, stop := startNode("web1")
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(cli, client.Options{RequestTimeout: 5 * time.Second})
	call := client.Call{
		Action: "login-url",
		To:     client.Targets{Nodes: []string{"web1", "web2"}}, // web2 has no agent
		Params: map[string]string{"site": "shop"},
		By:     "example",
	}
	for reply, err := range c.Run(ctx, call) {
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(reply.Node, reply.State, *reply.ExitCode, string(reply.Output))
	}
	// Output:
	// error: web2: no agent alive: the request waits for the node to return
	// web1 succeeded 0 {"url":"https://shop.example/wp-login.php?token=42"}
}

// startNode starts an embedded etcd and an agent for node with one
// handler, login-url, and returns a client and a stop function.
func startNode(node string) (*clientv3.Client, func()) {
	dir, err := os.MkdirTemp("", "ccm-example")
	check(err)
	me, err := user.Current()
	check(err)
	files := map[string]string{
		"sites.yaml": "files: [{path: /motd, content: hello}]\n",
		"bin/login-url": "#!/bin/sh\n" +
			`printf '{"url": "https://%s.example/wp-login.php?token=42"}' "$CCM_PARAM_SITE"` + "\n",
		"actions/login-url.yaml": "command: [" + filepath.Join(dir, "conf/bin/login-url") + "]\n" +
			"params: {site: {pattern: '[a-z0-9-]{1,64}', required: true}}\n" +
			"run_as: {user: " + me.Username + "}\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, "conf", name)
		check(os.MkdirAll(filepath.Dir(p), 0o755))
		check(os.WriteFile(p, []byte(body), 0o755))
	}
	ctx, cancel := context.WithCancel(context.Background())
	url := "http://" + freePorts()
	srv, err := embedded.Start(ctx, embedded.Config{Dir: filepath.Join(dir, "etcd"), ClientURL: url})
	check(err)
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{url}})
	check(err)
	ag, err := agent.New(agent.Options{
		Client: cli, Node: node, ConfigDir: filepath.Join(dir, "conf"),
		Root: filepath.Join(dir, "root"), StateDir: filepath.Join(dir, "state"),
	})
	check(err)
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	for ag.Ready() != nil {
		time.Sleep(10 * time.Millisecond)
	}
	return cli, func() {
		cancel()
		<-done
		cli.Close()
		srv.Close()
		os.RemoveAll(dir)
	}
}

// freePorts returns 127.0.0.1:<port> where port and port+1 (the embedded
// etcd's peer port) are free.
func freePorts() string {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		check(err)
		port := l.Addr().(*net.TCPAddr).Port
		next, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l.Close()
		if err == nil {
			next.Close()
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}

// Start a call, keep its ID, and follow it again with Resume: from
// another process of the cluster API, after a restart, without a scan.
func ExampleClient_Resume() {
	cli, stop := startNode("web1")
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(cli, client.Options{RequestTimeout: 5 * time.Second})
	h, err := c.Start(ctx, client.Call{Action: "login-url", To: client.Targets{Nodes: []string{"web1"}}, Params: map[string]string{"site": "blog"}, By: "example"})
	check(err)
	for r := range h.Replies() {
		fmt.Println("started:", r.Node, r.Reply.State)
	}
	again, err := c.Resume(ctx, h.ID, nil, 0)
	check(err)
	for r := range again.Replies() {
		fmt.Println("resumed:", r.Node, r.Reply.State, string(r.Reply.Output))
	}
	// Output:
	// started: web1 succeeded
	// resumed: web1 succeeded {"url":"https://blog.example/wp-login.php?token=42"}
}
