package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// rabbitServer is Debian's RabbitMQ server script that runs as the
// calling user (/usr/sbin/rabbitmq-server switches to rabbitmq).
const rabbitServer = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// rpcResult is the round trips of one mode of RabbitMQ RPC, in ms.
type rpcResult struct {
	mode     string
	p50, p90 float64
}

// rabbitModes are the RabbitMQ RPC patterns measured: the seeds'
// (transient messages, no confirms) and the fair peer of a durable ccm
// (durable queues, persistent messages, publisher confirms).
var rabbitModes = []string{"transient", "durable"}

// rabbitRPC measures RabbitMQ RPC as platforms use it for node actions
// (bench/rabbitmq_rpc.py: an exchange per action, a consumer per node that
// execs /bin/true, a reply_to queue and a correlation id) on a private
// broker of its own, in each of rabbitModes, and returns the p50 and p90
// of calls round trips in ms. It returns errSkipped, saying why, when
// Debian's rabbitmq-server and python3-pika are not installed.
func (b *bench) rabbitRPC(calls int) ([]rpcResult, error) {
	if _, err := os.Stat(rabbitServer); err != nil {
		return nil, fmt.Errorf("%w: Debian's rabbitmq-server is not installed", errSkipped)
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import pika").Run(); err != nil {
		return nil, fmt.Errorf("%w: Debian's python3-pika is not installed", errSkipped)
	}
	home := filepath.Join(b.work, "rabbitmq")
	if err := os.MkdirAll(filepath.Join(home, "log"), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(home, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, portText, _ := net.SplitHostPort(addr)
	var port int
	fmt.Sscan(portText, &port)
	cmd := exec.Command(rabbitServer)
	cmd.Env = append(os.Environ(), "HOME="+home, fmt.Sprintf("RABBITMQ_NODENAME=ccmbench%d@localhost", os.Getpid()),
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", port), fmt.Sprintf("RABBITMQ_DIST_PORT=%d", port+1),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(home, "mnesia"), "RABBITMQ_LOG_BASE="+filepath.Join(home, "log"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(home, "enabled_plugins"), "RABBITMQ_PID_FILE="+filepath.Join(home, "pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	if err := waitFor(2*time.Minute, 100*time.Millisecond, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		return nil, fmt.Errorf("rabbitmq-server did not listen: %w", err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Minute)
	defer cancel()
	var results []rpcResult
	for _, mode := range rabbitModes {
		out, err := exec.CommandContext(ctx, "/usr/bin/python3", "bench/rabbitmq_rpc.py", fmt.Sprint(port), fmt.Sprint(calls), mode).Output()
		if err != nil {
			return nil, fmt.Errorf("bench/rabbitmq_rpc.py %s: %w", mode, err)
		}
		var r struct{ P50, P90 float64 }
		if err := json.Unmarshal(out, &r); err != nil {
			return nil, fmt.Errorf("bench/rabbitmq_rpc.py %s: %w: %s", mode, err, out)
		}
		results = append(results, rpcResult{mode: mode, p50: r.P50, p90: r.P90})
	}
	return results, nil
}

// errSkipped marks a peer that cannot run on this machine.
var errSkipped = errors.New("skipped")
