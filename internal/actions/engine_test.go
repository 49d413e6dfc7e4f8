package actions_test

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// handlerDir writes one handler, log, that appends its request id to file.
func handlerDir(t *testing.T, file string) string {
	t.Helper()
	me, err := user.Current()
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "actions"), 0o755))
	script := filepath.Join(dir, "log.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho \"$CCM_ACTION_ID\" >> "+file+"\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "actions", "log.yaml"),
		[]byte(fmt.Sprintf("command: [%s]\nrun_as: {user: %s}\nconcurrency: 4\n", script, me.Username)), 0o644))
	return dir
}

// Two engines serving one node (which the agent prevents, but a claim must
// not rely on it) never run a request twice.
func TestTwoEnginesForOneNodeRunEachRequestOnce(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "log")
	hs, err := actions.LoadHandlers(handlerDir(t, log))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		e := actions.NewEngine(actions.Options{Client: etcd.Client(t), Node: "web1", Handlers: func() *actions.Handlers { return hs }})
		wg.Add(1)
		go func() { defer wg.Done(); e.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	cli := client.New(etcd.Client(t), client.Options{})
	// The node is "alive" as far as callers can see.
	_, err = etcd.Client(t).Put(context.Background(), "/ccm/nodes/web1/alive", `{"node":"web1"}`)
	require.NoError(t, err)
	const calls = 40
	var ids []string
	for range calls {
		s, err := cli.Send(context.Background(), client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1"}}})
		require.NoError(t, err)
		ids = append(ids, s.ID)
	}
	for _, id := range ids {
		require.Eventually(t, func() bool {
			recs, err := cli.Get(context.Background(), id)
			return err == nil && len(recs) == 1 && recs[0].Reply != nil && recs[0].Reply.State == api.StateSucceeded
		}, 30*time.Second, 20*time.Millisecond, "request %s succeeds", id)
	}
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	ran := strings.Fields(string(b))
	assert.ElementsMatch(t, ids, ran, "every request ran exactly once")
}

func TestARequestNotPickedUpIsWithdrawnAndNeverRuns(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	log := filepath.Join(t.TempDir(), "log")
	hs, err := actions.LoadHandlers(handlerDir(t, log))
	require.NoError(t, err)
	raw := etcd.Client(t)
	// An alive key, but no engine yet: the node is hung.
	_, err = raw.Put(context.Background(), "/ccm/nodes/web1/alive", `{"node":"web1"}`)
	require.NoError(t, err)
	cli := client.New(raw, client.Options{})
	var id string
	for r, err := range cli.Run(context.Background(), client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1"}}, Timing: client.Timing{PickupTimeout: 300 * time.Millisecond}}) {
		require.ErrorIs(t, err, client.ErrNoPickup)
		id = r.ID
	}
	recs, err := cli.Get(context.Background(), id)
	require.NoError(t, err)
	assert.Empty(t, recs, "the request was withdrawn")

	// The node recovers: nothing of the withdrawn call runs, a new call does.
	ctx, cancel := context.WithCancel(context.Background())
	e := actions.NewEngine(actions.Options{Client: raw, Node: "web1", Handlers: func() *actions.Handlers { return hs }})
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for r, err := range cli.Run(context.Background(), client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1"}}}) {
		require.NoError(t, err)
		assert.Equal(t, api.StateSucceeded, r.State)
		b, err := os.ReadFile(log)
		require.NoError(t, err)
		assert.Equal(t, r.ID+"\n", string(b), "only the new call ran")
	}
}

// A caller that stops waiting (its context ends, or it breaks out of the
// loop) withdraws the requests no node claimed: they never run behind its
// back when the node recovers.
func TestACallerThatStopsWaitingWithdrawsWhatNoNodeClaimed(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	for _, n := range []string{"web1", "web2"} { // alive keys, no engine: hung nodes
		_, err := raw.Put(context.Background(), "/ccm/nodes/"+n+"/alive", `{"node":"`+n+`"}`)
		require.NoError(t, err)
	}
	cli := client.New(raw, client.Options{})
	// The caller stops waiting once its request is written, however long
	// the writes took on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			resp, err := raw.Get(ctx, "/ccm/actions/web1/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err == nil && resp.Count > 0 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var id string
	for r, err := range cli.Run(ctx, client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1"}}, Timing: client.Timing{PickupTimeout: time.Minute}}) {
		require.ErrorIs(t, err, context.Canceled)
		id = r.ID
	}
	recs, err := cli.Get(context.Background(), id)
	require.NoError(t, err)
	assert.Empty(t, recs, "withdrawn when the context ended")

	// web1 answers, web2 hangs: a caller that breaks out after the first
	// reply withdraws web2's request before Run returns.
	hs, err := actions.LoadHandlers(handlerDir(t, filepath.Join(t.TempDir(), "log")))
	require.NoError(t, err)
	ectx, stop := context.WithCancel(context.Background())
	e := actions.NewEngine(actions.Options{Client: raw, Node: "web1", Handlers: func() *actions.Handlers { return hs }})
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ectx) }()
	defer func() { stop(); <-done }()
	for r, err := range cli.Run(context.Background(), client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1", "web2"}}, Timing: client.Timing{PickupTimeout: time.Minute}}) {
		require.NoError(t, err)
		assert.Equal(t, "web1", r.Node)
		id = r.ID
		break
	}
	recs, err = cli.Get(context.Background(), id)
	require.NoError(t, err)
	require.Len(t, recs, 1, "web2's request was withdrawn")
	assert.Equal(t, "web1", recs[0].Node)
}

// A call followed again by id, from a caller that did not wait: Resume
// yields the reply already written and the one still to come, finds the
// call by its record (a request planted under another node with the same
// id is not the call's), and says so for an unknown id.
func TestAResumedCallYieldsEveryNodesEnd(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	raw := etcd.Client(t)
	cli := client.New(raw, client.Options{})
	engine := func(node string) func() {
		hs, err := actions.LoadHandlers(handlerDir(t, filepath.Join(t.TempDir(), "log")))
		require.NoError(t, err)
		ctx, stop := context.WithCancel(context.Background())
		e := actions.NewEngine(actions.Options{Client: raw, Node: node, Handlers: func() *actions.Handlers { return hs }})
		done := make(chan struct{})
		go func() { defer close(done); e.Run(ctx) }()
		return func() { stop(); <-done }
	}
	for _, n := range []string{"web1", "web2"} { // alive keys, as agents write them
		_, err := raw.Put(context.Background(), "/ccm/nodes/"+n+"/alive", `{"node":"`+n+`"}`)
		require.NoError(t, err)
	}
	stop1 := engine("web1")
	defer stop1()

	sent, err := cli.Send(context.Background(), client.Call{Action: "log", To: client.Targets{Nodes: []string{"web1", "web2"}}})
	require.NoError(t, err)
	_, err = raw.Put(context.Background(), "/ccm/actions/web9/"+sent.ID, `{"id":"`+sent.ID+`","action":"log"}`)
	require.NoError(t, err)

	h, err := cli.Resume(context.Background(), sent.ID, nil, time.Minute)
	require.NoError(t, err)
	stop2 := engine("web2") // web2 claims its request only now
	defer stop2()
	got := map[string]string{}
	for r := range h.Replies() {
		require.NoError(t, r.Err)
		got[r.Node] = r.Reply.State
	}
	require.NoError(t, h.Err())
	assert.Equal(t, map[string]string{"web1": api.StateSucceeded, "web2": api.StateSucceeded}, got)

	recs, err := cli.Get(context.Background(), sent.ID)
	require.NoError(t, err)
	require.Len(t, recs, 2, "the call is what its record names")
	assert.Equal(t, []string{"web1", "web2"}, []string{recs[0].Node, recs[1].Node})

	_, err = cli.Resume(context.Background(), api.NewID(time.Now()), nil, 0)
	require.ErrorIs(t, err, client.ErrUnknownCall)
}
