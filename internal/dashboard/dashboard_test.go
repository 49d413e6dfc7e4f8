package dashboard_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/dashboard"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// viewer reads one event stream and hands each state on.
func viewer(t *testing.T, ctx context.Context, url string) <-chan dashboard.State {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/events", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	states := make(chan dashboard.State, 64)
	go func() {
		defer resp.Body.Close()
		defer close(states)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var st dashboard.State
			if json.Unmarshal([]byte(data), &st) == nil {
				states <- st
			}
		}
	}()
	return states
}

// until reads states until one satisfies cond.
func until(t *testing.T, states <-chan dashboard.State, cond func(dashboard.State) bool, msg string) dashboard.State {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case st, ok := <-states:
			require.True(t, ok, "the stream ended before: %s", msg)
			if cond(st) {
				return st
			}
		case <-timeout:
			t.Fatalf("no state: %s", msg)
		}
	}
}

// Every open page gets every change, from the one watch of the server.
func TestEveryViewerGetsTheChange(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	c := cluster.New(cli, cluster.Options{Prefix: api.DefaultPrefix})
	srv := dashboard.New(c, client.New(cli, client.Options{}), zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	web := httptest.NewServer(srv.Handler(dashboard.Access{}))
	defer func() {
		cancel()
		web.CloseClientConnections()
		web.Close()
		require.NoError(t, <-done)
	}()

	var views []<-chan dashboard.State
	for range 5 {
		views = append(views, viewer(t, ctx, web.URL))
	}
	for i, v := range views {
		st := until(t, v, func(st dashboard.State) bool { return st.View != nil }, "the current state at once")
		assert.Nil(t, st.View.Failure, "viewer %d", i)
	}
	_, err := cli.Put(context.Background(), c.FailureKey("web2"), `{"node":"web2","configuration":"nginx","error":"validate failed","revision":7}`)
	require.NoError(t, err)
	for i, v := range views {
		st := until(t, v, func(st dashboard.State) bool { return st.View != nil && st.View.Failure != nil }, "the failure")
		assert.Equal(t, "web2", st.View.Failure.Node, "viewer %d", i)
		assert.Equal(t, "serial (one node at a time)", st.Rollout)
	}

	resp, err := http.Get(web.URL + "/state.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st dashboard.State
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	require.NotNil(t, st.View)
	assert.Equal(t, "nginx", st.View.Failure.Configuration, "/state.json serves the same state")
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'self'")
}
