package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// sharedWatchMin is how many nodes a send addresses from which the call
// follows their replies and presence with one watch on the nodes' prefix
// instead of two watches per node. etcd's client creates the watches of a
// stream one after the other, a round trip each, and the requests are
// written only once every watch exists: 1,000 watches for 500 nodes took
// more than a second before the first request went out. One prefix watch
// costs one round trip; for the call's time it also carries the other
// writes under nodes/ (other calls' replies, statuses), which a call to a
// few nodes of a large cluster should not pay for, hence the threshold.
const sharedWatchMin = 16

// route is where the shared watch delivers the events of one key: the
// channel a waiter reads, until the waiter is done.
type route struct {
	ch   chan clientv3.WatchResponse
	done <-chan struct{}
	// put is true for a reply key (its puts are delivered, as the
	// per-node watch's WithFilterDelete does) and false for an alive key
	// (its deletions are, as WithFilterPut does).
	put bool
}

// watchShared is watch for many nodes: one watch on the nodes' prefix,
// created before it returns, whose events one goroutine hands to each
// node's waiter. The watch ends when the last waiter is cancelled (or ctx
// is), and the goroutine with it. It falls back to watch's two watches
// per node for a role that may not watch the whole prefix.
func (c *Client) watchShared(ctx context.Context, id string, nodes []string) ([]*waiter, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := c.cli.Watch(wctx, c.keys.NodesPrefix(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	rctx, rcancel := c.request(ctx)
	defer rcancel()
	select {
	case wr, ok := <-wch:
		if err := wr.Err(); err != nil || !ok {
			cancel()
			if deniedWatch(err) {
				return c.watchEach(ctx, id, nodes)
			}
			return nil, fmt.Errorf("watch the replies: %w", errors.Join(err, ctx.Err()))
		}
	case <-rctx.Done():
		cancel()
		return nil, fmt.Errorf("watch the replies: %w", rctx.Err())
	}
	routes := make(map[string]route, 2*len(nodes))
	ws := make([]*waiter, 0, len(nodes))
	var mu sync.Mutex
	left := len(nodes)
	leave := func() { // a waiter is done; the last one ends the watch
		mu.Lock()
		defer mu.Unlock()
		if left--; left <= 0 {
			cancel()
		}
	}
	for _, n := range nodes {
		replies, gone := make(chan clientv3.WatchResponse, 4), make(chan clientv3.WatchResponse, 2)
		done := make(chan struct{})
		var once sync.Once
		stop := func() {
			once.Do(func() {
				close(done)
				leave()
			})
		}
		routes[c.keys.ReplyKey(n, id)] = route{ch: replies, done: done, put: true}
		routes[c.keys.AliveKey(n)] = route{ch: gone, done: done}
		ws = append(ws, &waiter{node: n, id: id, replies: replies, gone: gone, cancel: stop})
	}
	go dispatch(wch, routes)
	return ws, nil
}

// dispatch hands each event of the shared watch to the waiter of its key,
// in the order etcd sent them, and a watch error to every waiter, until
// the watch ends. A waiter that is done gets nothing more.
func dispatch(wch clientv3.WatchChan, routes map[string]route) {
	for wr := range wch {
		if err := wr.Err(); err != nil {
			for _, r := range routes {
				if r.put {
					deliver(r, wr)
				}
			}
			continue // etcd's client closes the channel next
		}
		for _, ev := range wr.Events {
			r, ok := routes[string(ev.Kv.Key)]
			if !ok || r.put != (ev.Type == mvccpb.PUT) {
				continue
			}
			one := clientv3.WatchResponse{Header: wr.Header, Events: []*clientv3.Event{ev}}
			if r.put {
				deliver(r, one)
				continue
			}
			// A deletion of the alive key is a signal, which a waiter
			// stops reading once it has one (a node not picked up yet
			// is left to the pickup timeout): one that waits says all,
			// and a node whose agent restarts again and again never
			// holds up the other nodes' replies.
			select {
			case r.ch <- one:
			default:
			}
		}
	}
}

// deliver sends wr to a route's waiter, unless the waiter is done: a
// waiter reads its replies until it is.
func deliver(r route, wr clientv3.WatchResponse) {
	select {
	case r.ch <- wr:
	case <-r.done:
	}
}

// deniedWatch reports whether a watch failed for want of permission. etcd
// cancels such a watch with the reason as text, which etcd's client hands
// back as a plain error.
func deniedWatch(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) || strings.Contains(err.Error(), rpctypes.ErrPermissionDenied.Error()))
}
