// Package dashboard serves a read-only web page of a ccm cluster: every
// node with its state and whether it is behind, the failure flag or the
// pause, the lock holders, the rollout strategy and the recent actions.
//
// One watch on the cluster's prefix drives it, whatever the number of
// viewers: a change is followed, after a short quiet period, by one read of
// the cluster, and every viewer gets the new state through server-sent
// events. The page and its script ship in the binary.
package dashboard

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/follow"
)

//go:embed assets
var assets embed.FS

// RecentActions is how many of the newest action requests the page shows.
const RecentActions = 20

// quiet is how long the dashboard waits after a change before it reads
// the cluster: a rollout writes many keys in a burst.
const quiet = 100 * time.Millisecond

// healthEvery is how often the dashboard reads the cluster without a
// change, for etcd's health.
const healthEvery = 10 * time.Second

// heartbeat keeps idle event streams open through proxies.
const heartbeat = 15 * time.Second

// State is what the page shows, as /state.json and each event carry it.
type State struct {
	// Revision is the etcd revision the state was read at.
	Revision int64         `json:"revision"`
	Time     time.Time     `json:"time"`
	View     *cluster.View `json:"view"`
	// Rollout is the strategy in words.
	Rollout string   `json:"rollout"`
	Actions []Action `json:"actions"`
	// Etcd is the health of each etcd endpoint the dashboard talks to.
	Etcd []Member `json:"etcd"`
	// Error is set while etcd cannot be read; View is then the last view
	// read, made stale (cluster.View.AsStale): every node's state is
	// unknown, and View.ReadAt is the time of the last good read.
	Error string `json:"error,omitempty"`
}

// Member is one etcd endpoint as the dashboard sees it.
type Member struct {
	Endpoint string `json:"endpoint"`
	// Healthy is set when the endpoint answered its status and a
	// cluster leader is known.
	Healthy bool   `json:"healthy"`
	Leader  bool   `json:"leader,omitempty"`
	Version string `json:"version,omitempty"`
	DBSize  int64  `json:"db_size,omitempty"`
	Error   string `json:"error,omitempty"`
}

// members asks every endpoint for its status.
func (s *Server) members(ctx context.Context) []Member {
	cli := s.cluster.Client()
	var out []Member
	for _, ep := range cli.Endpoints() {
		m := Member{Endpoint: ep}
		st, err := cli.Status(ctx, ep)
		switch {
		case err != nil:
			m.Error = err.Error()
		case st.Leader == 0:
			m.Error = "no leader"
		default:
			m.Healthy, m.Leader, m.Version, m.DBSize = true, st.Leader == st.Header.MemberId, st.Version, st.DbSize
		}
		out = append(out, m)
	}
	return out
}

// Action is one request of a recent action call, to one node. Parameters
// are left out: they are the caller's business.
type Action struct {
	ID       string    `json:"id"`
	Action   string    `json:"action"`
	Node     string    `json:"node"`
	By       string    `json:"by,omitempty"`
	Created  time.Time `json:"created"`
	State    string    `json:"state"`
	Error    string    `json:"error,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
}

// Server is the dashboard of one cluster.
type Server struct {
	cluster *cluster.Cluster
	client  *client.Client
	log     *zap.Logger

	mu      sync.Mutex
	last    State                    // the last state read
	state   []byte                   // the same, JSON
	viewers map[chan []byte]struct{} // each gets every new state
}

// New returns the dashboard of c; calls reads the recent actions.
func New(c *cluster.Cluster, calls *client.Client, log *zap.Logger) *Server {
	return &Server{cluster: c, client: calls, log: log, viewers: map[chan []byte]struct{}{}}
}

// Run follows the cluster until ctx ends: it reads the state once, then
// again after every burst of changes under the prefix.
func (s *Server) Run(ctx context.Context) error {
	changed := make(chan struct{}, 1)
	go func() {
		defer close(changed)
		s.follow(ctx, changed)
	}()
	s.refresh(ctx)
	health := time.NewTicker(healthEvery)
	defer health.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-health.C: // etcd's health changes without an event
			s.refresh(ctx)
		case _, ok := <-changed:
			if !ok {
				return nil
			}
			select { // let the burst end
			case <-ctx.Done():
				return nil
			case <-time.After(quiet):
			}
			select {
			case <-changed:
			default:
			}
			s.refresh(ctx)
		}
	}
}

// follow signals changed at every change of what ccm status reads (the
// cluster's prefix but its releases: cluster.StatusRanges), and whenever
// a follower lists again after a broken watch.
func (s *Server) follow(ctx context.Context, changed chan<- struct{}) {
	var wg sync.WaitGroup
	for _, r := range cluster.StatusRanges(s.cluster.Keys) {
		wg.Go(func() {
			follow.New(s.cluster.Client(), signaller(changed), follow.Options{
				Name: "dashboard", Key: r[0],
				ListOptions:  []clientv3.OpOption{clientv3.WithRange(r[1]), clientv3.WithCountOnly()},
				WatchOptions: []clientv3.OpOption{clientv3.WithRange(r[1])}, Logger: s.log,
			}).Run(ctx)
		})
	}
	wg.Wait()
}

// signaller signals a channel at every list and watch response.
type signaller chan<- struct{}

func (c signaller) signal() {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Reset signals.
func (c signaller) Reset(context.Context, []*mvccpb.KeyValue, int64, string) error {
	c.signal()
	return nil
}

// Apply signals.
func (c signaller) Apply(context.Context, clientv3.WatchResponse) error {
	c.signal()
	return nil
}

// refresh reads the cluster and hands the state to every viewer when it
// changed.
func (s *Server) refresh(ctx context.Context) {
	st := s.read(ctx)
	raw, err := json.Marshal(st)
	if err != nil {
		s.log.Error("dashboard state", zap.Error(err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = st
	if bytes.Equal(raw, s.state) {
		return
	}
	s.state = raw
	for v := range s.viewers {
		select {
		case v <- raw:
		default: // a slow viewer skips a state; the next one replaces it
		}
	}
}

// read reads the state; on error it keeps the last one, with the error.
func (s *Server) read(ctx context.Context) State {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st := State{Time: time.Now().UTC(), Etcd: s.members(rctx)}
	v, err := s.cluster.View(rctx)
	if err == nil {
		st.View, st.Rollout, st.Revision = v, v.Rollout.String(), v.Revision
		var recs []client.Record
		recs, err = s.client.List(rctx, "", RecentActions)
		st.Actions = actionsOf(recs)
	}
	if err != nil {
		s.mu.Lock()
		last := s.last
		s.mu.Unlock()
		last.Time, last.Etcd = st.Time, st.Etcd
		last.Error = fmt.Sprintf("cannot read etcd: %v", err)
		if last.View != nil && !last.View.Stale {
			last.View = last.View.AsStale()
		}
		return last
	}
	return st
}

func actionsOf(recs []client.Record) []Action {
	out := make([]Action, 0, len(recs))
	for _, r := range recs {
		a := Action{ID: r.Request.ID, Action: r.Request.Action, Node: r.Node, By: r.By(), Created: r.Request.Created, State: api.StatePending}
		if rep := r.Reply; rep != nil {
			a.State, a.Error, a.Finished = rep.State, rep.Error, rep.Finished
		}
		out = append(out, a)
	}
	return out
}

// Handler serves the page, /state.json and /events to those access
// allows.
func (s *Server) Handler(access Access) http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /state.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.current())
	})
	mux.HandleFunc("GET /events", s.events)
	return securityHeaders(access.guard(mux))
}

// current is the last state read.
func (s *Server) current() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// events streams the state: the current one at once, then every change.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	ch := make(chan []byte, 1)
	s.mu.Lock()
	s.viewers[ch] = struct{}{}
	if s.state != nil {
		ch <- s.state
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.viewers, ch)
		s.mu.Unlock()
	}()
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case raw := <-ch:
			if _, err := fmt.Fprintf(w, "data: %s\n\n", raw); err != nil {
				return
			}
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": beat\n\n"); err != nil {
				return
			}
		}
		flusher.Flush()
	}
}

// securityHeaders forbids everything the page does not need: it loads
// only itself, and the data it shows (customers' names and errors) is
// text, never markup.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}
