package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
)

// Defaults of a call.
const (
	DefaultPickupTimeout = 10 * time.Second
	DefaultRetention     = api.DefaultRetention
)

// DefaultSignedDeadline is the deadline of a signed call that sets none:
// an agent refuses a signed request without one, since a signed request
// without a deadline could be replayed once its reply expired.
const DefaultSignedDeadline = time.Hour

// The errors a call reports for one node, wrapped in a *NodeError.
var (
	// ErrNotAlive: the node was named but no agent of it is alive. Its
	// request was written all the same, and runs when it returns (before
	// the deadline, if one was given).
	ErrNotAlive = errors.New("no agent alive: the request waits for the node to return")
	// ErrNoPickup: the node did not pick the request up within the
	// pickup timeout; the request was withdrawn and never runs.
	ErrNoPickup = errors.New("no reply within the pickup timeout; the request was withdrawn")
	// ErrNodeLost: the node's agent went away while the action ran. Its
	// reply will say interrupted when it returns.
	ErrNodeLost = errors.New("the agent went away while the action ran")
	// ErrNotSent: the call stopped sending after MaxFailures failures.
	ErrNotSent = errors.New("not sent: the call stopped after too many failures")
)

// ErrNoKey is reported for a node whose key to seal secrets to is not
// known: it is not alive, or publishes none.
var ErrNoKey = errors.New("no action key published: the secret parameters cannot be sealed to it")

// ErrGone is reported by Resume for a node whose request is gone without
// a reply: withdrawn (no pickup in time), or expired with its reply.
var ErrGone = errors.New("no request and no reply: withdrawn, or expired")

// ErrUnknownCall is returned by Resume for an id no request carries.
var ErrUnknownCall = errors.New("no such call: unknown, or expired")

// ErrNoTargets is returned when a call addresses no node.
var ErrNoTargets = errors.New("no node to call: no alive node matches, and none was named")

// NodeError is a node that gave no final reply.
type NodeError struct {
	Node string
	Err  error
}

// Error names the node and what happened to its request.
func (e *NodeError) Error() string { return e.Node + ": " + e.Err.Error() }

// Unwrap returns one of ErrNotAlive, ErrNoPickup, ErrNodeLost or
// ErrNotSent, or the context's error.
func (e *NodeError) Unwrap() error { return e.Err }

// Call is one action called on some nodes: what runs (Action, Params,
// Secrets), who asks (By; the signature is the client's Signer), whom it
// addresses (To), when it may run (Timing) and how it fans out (FanOut).
type Call struct {
	Action string
	Params map[string]string
	// Secrets are parameters sealed to each node's key: only that node
	// can read them, and etcd never holds them in clear. The handler
	// declares them secret: true.
	Secrets map[string]string
	// By names the caller in the request.
	By     string
	To     Targets
	Timing Timing
	FanOut FanOut
}

// Targets address a call; their union is called. Labels and All match
// alive nodes only; a named node that is not alive is reported with
// ErrNotAlive. Labels are those an operator gave the node (ccm node
// label), never those it claims itself.
type Targets struct {
	Nodes  []string
	Labels map[string]string
	All    bool
}

// Timing bounds a call's requests in time.
type Timing struct {
	// Deadline, when set, is the last moment a node may pick up the
	// request (a signed call without one gets DefaultSignedDeadline).
	Deadline time.Time
	// Timeout, when set, shortens the handler's timeout.
	Timeout time.Duration
	// PickupTimeout is how long a node has to pick up its request
	// (DefaultPickupTimeout when 0); Retention is how long requests and
	// replies are kept (DefaultRetention when 0).
	PickupTimeout time.Duration
	Retention     time.Duration
}

// FanOut is how a call spreads over its nodes: Batch, when above 0, sends
// to at most that many nodes at a time; MaxFailures, when above 0, stops
// sending after that many failures (the rest get ErrNotSent).
type FanOut struct {
	Batch       int
	MaxFailures int
}

// Options configures a Client.
type Options struct {
	// Prefix is the cluster's key prefix (api.DefaultPrefix when
	// empty).
	Prefix string
	// RequestTimeout bounds each etcd request of a call, but not the wait
	// for replies (0: only the context does).
	RequestTimeout time.Duration
	// Signer, when set, signs every request (agents started with
	// --action-keys run only signed ones).
	Signer ssh.Signer
	// Schemas, when set, are the object schemas PutObject enforces
	// (schemas.Load of the configuration directory).
	Schemas Validator
	// ReleaseSchemas, when set, makes PutObjects check objects against
	// the schemas of the promoted release instead of Schemas: it reads
	// <prefix>/release at each call, asks ReleaseSchemas for that
	// release's validator, and writes only while that release is still
	// the promoted one. With no release promoted, Schemas apply. (The
	// client is built on the wire alone, with no JSON Schema compiler:
	// ccm's own commands pass the one of its releases package.)
	ReleaseSchemas func(ctx context.Context, release string) (Validator, error)
}

// Validator checks an object against its type's schema; the schemas of a
// configuration directory are one.
type Validator interface {
	Validate(typ string, data map[string]any) error
}

// Client calls actions on one cluster.
type Client struct {
	cli  *clientv3.Client
	keys api.Keys
	opts Options

	mu        sync.Mutex
	leases    map[time.Duration]heldLease // by retention
	clusterID uint64                      // etcd's, once read
	noRecords bool                        // the role may not write call records
}

// New returns a Client.
func New(cli *clientv3.Client, opts Options) *Client {
	return &Client{cli: cli, keys: api.NewKeys(opts.Prefix), opts: opts, leases: map[time.Duration]heldLease{}}
}

// request bounds one etcd request by RequestTimeout.
func (c *Client) request(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.opts.RequestTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.RequestTimeout)
}

// Sent is a call whose requests are written.
type Sent struct {
	ID string
	// Nodes are the alive nodes addressed; NotAlive the named ones that
	// are not; NoKey those a call with secrets skipped, for want of the
	// node's key (ErrNoKey).
	Nodes    []string
	NotAlive []string
	NoKey    []string
	// Revision is the etcd revision of the first write.
	Revision int64
	// ReplyKey is the call's own key: the replies of a handler that
	// declares secret_output are sealed to it. Run opens them; a caller of
	// Send keeps it (Private) to open them later (api.Reply.Open).
	ReplyKey  *api.Key
	retention time.Duration
	keys      map[string]string // node -> its action key
	secrets   map[string]string
	binding   api.Binding // the cluster a signed request is for
	action    string
	recorded  bool // the call record is written
	lease     *earlyLease
}

// Send writes the call's requests and returns without waiting; Batch is
// ignored. Read the outcome with Get or Resume, or ccm action get.
func (c *Client) Send(ctx context.Context, call Call) (*Sent, error) {
	if err := checkCall(call); err != nil {
		return nil, err
	}
	lease := c.leaseEarly(ctx, call)
	defer c.endLease(lease)
	s, req, err := c.prepare(ctx, call, api.NewID(time.Now()))
	if err != nil {
		return nil, err
	}
	s.lease = lease
	rev, err := c.write(ctx, s, req, append(slices.Clone(s.Nodes), s.NotAlive...))
	s.Revision = rev
	return s, err
}

// NodeReply is one node's end of a call: its final reply, or Err (a
// *NodeError) for a node that gave none. Reply.ID and Reply.Node are set
// either way.
type NodeReply struct {
	Node  string
	Reply api.Reply
	Err   error
}

// Handle is a call under way, from Start or Resume. Replies drives it:
// iterate it, or cancel the context the call was started with.
type Handle struct {
	// ID is the call's id: Resume(ID) follows it again from elsewhere.
	ID string
	// Sent says whom the call addresses (for a resumed call, Nodes alone).
	Sent *Sent

	c       *Client
	ctx     context.Context
	cancel  context.CancelFunc
	call    Call
	req     *api.Request
	early   *earlyWatches
	resumed []*waiter // Resume: the watches of the requests still open
	done    []NodeReply
	err     error
}

// Start resolves the call's nodes and returns its handle; the requests are
// written as Replies is iterated, batch by batch. An error that prevents
// the call (etcd unreachable, no node to call, a bad parameter) is
// returned here, and no request is written.
func (c *Client) Start(ctx context.Context, call Call) (*Handle, error) {
	if err := checkCall(call); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	id := api.NewID(time.Now())
	early, lease := c.watchEarly(ctx, id, call), c.leaseEarly(ctx, call)
	s, req, err := c.prepare(ctx, call, id)
	if err != nil {
		early.discard()
		c.endLease(lease)
		cancel()
		return nil, err
	}
	s.lease = lease
	return &Handle{ID: id, Sent: s, c: c, ctx: ctx, cancel: cancel, call: call, req: req, early: early}, nil
}

// Replies yields each node's end of the call as it arrives, exactly once
// per node. Breaking out of the loop, or cancelling the call's context,
// stops waiting and withdraws every request no node claimed yet, before
// Replies returns; a claimed one still runs, and so does the request to a
// named node that is not alive (ErrNotAlive). An error that ends the call
// early (etcd unreachable) ends the iteration: Err returns it.
func (h *Handle) Replies() iter.Seq[NodeReply] {
	return func(yield func(NodeReply) bool) {
		defer h.c.endLease(h.Sent.lease)
		var waiting sync.WaitGroup // the awaits, which withdraw at cancel
		defer waiting.Wait()
		defer h.cancel()
		for _, r := range h.done {
			if !yield(r) {
				return
			}
		}
		if h.resumed != nil || h.req == nil {
			h.follow(h.resumed, yield, &waiting)
			return
		}
		h.run(yield, &waiting)
	}
}

// Err is the error that ended the call before every node answered, once
// Replies returned; nil when every node got its NodeReply.
func (h *Handle) Err() error { return h.err }

// fail is the NodeReply of a node that gave no final reply.
func (h *Handle) fail(node string, err error) NodeReply {
	return NodeReply{Node: node, Reply: api.Reply{ID: h.ID, Node: node}, Err: &NodeError{Node: node, Err: err}}
}

// run sends the call under its schedule and yields the replies.
func (h *Handle) run(yield func(NodeReply) bool, waiting *sync.WaitGroup) {
	c, s, ctx := h.c, h.Sent, h.ctx
	for _, n := range s.NoKey {
		if !yield(h.fail(n, ErrNoKey)) {
			return
		}
	}
	if len(s.NotAlive) > 0 {
		if _, h.err = c.write(ctx, s, h.req, s.NotAlive); h.err != nil {
			return
		}
		for _, n := range s.NotAlive {
			if !yield(h.fail(n, ErrNotAlive)) {
				return
			}
		}
	}
	pickup := cmp.Or(h.call.Timing.PickupTimeout, DefaultPickupTimeout)
	done := make(chan result, len(s.Nodes)) // a caller that stops early leaves no sender blocked
	plan, early := newSchedule(s.Nodes, h.call.FanOut.Batch, h.call.FanOut.MaxFailures), h.early
	for {
		if send := plan.send(); len(send) > 0 {
			waiters, err := early.take(send)
			if early == nil {
				waiters, err = c.watch(ctx, s.ID, send)
			}
			early = nil
			if err == nil {
				_, err = c.write(ctx, s, h.req, send)
			}
			if err != nil {
				h.err = err
				return
			}
			h.await(waiters, pickup, done, waiting)
		}
		if unsent, over := plan.over(); over {
			for _, n := range unsent {
				if !yield(h.fail(n, ErrNotSent)) {
					return
				}
			}
			return
		}
		r := <-done
		plan.done(r.err == nil && r.reply.State == api.StateSucceeded)
		if !yield(h.end(r)) {
			return
		}
	}
}

// await waits for each waiter's final reply in its own goroutine.
func (h *Handle) await(waiters []*waiter, pickup time.Duration, done chan<- result, waiting *sync.WaitGroup) {
	for _, w := range waiters {
		waiting.Add(1)
		go func() {
			defer waiting.Done()
			done <- w.await(h.ctx, h.c, pickup)
		}()
	}
}

// end is the NodeReply of a waiter's result, its secret output opened.
func (h *Handle) end(r result) NodeReply {
	if r.err != nil {
		return h.fail(r.node, r.err)
	}
	if err := r.reply.Open(h.Sent.ReplyKey); err != nil {
		r.reply.Error = err.Error()
	}
	return NodeReply{Node: r.node, Reply: r.reply}
}

// follow yields the replies of a resumed call's open requests.
func (h *Handle) follow(waiters []*waiter, yield func(NodeReply) bool, waiting *sync.WaitGroup) {
	done := make(chan result, len(waiters))
	h.await(waiters, cmp.Or(h.call.Timing.PickupTimeout, DefaultPickupTimeout), done, waiting)
	for range waiters {
		if !yield(h.end(<-done)) {
			return
		}
	}
}

// Run calls the action and yields each node's final reply as it arrives:
// Start and Replies in one loop, for a caller that needs no handle. A
// reply, or an empty reply (ID and Node set) with a *NodeError; an error
// that ends the call (etcd unreachable, no node to call) is yielded
// alone, with no node.
func (c *Client) Run(ctx context.Context, call Call) iter.Seq2[api.Reply, error] {
	return func(yield func(api.Reply, error) bool) {
		h, err := c.Start(ctx, call)
		if err != nil {
			yield(api.Reply{}, err)
			return
		}
		for r := range h.Replies() {
			if !yield(r.Reply, r.Err) {
				return
			}
		}
		if h.Err() != nil {
			yield(api.Reply{}, h.Err())
		}
	}
}

type result struct {
	node  string
	reply api.Reply
	err   error
}

// prepare resolves the call's nodes and builds its request.
func (c *Client) prepare(ctx context.Context, call Call, id string) (*Sent, *api.Request, error) {
	ctx, cancel := c.request(ctx)
	defer cancel()
	live, err := c.alive(ctx, call)
	if err != nil {
		return nil, nil, err
	}
	var labels map[string]map[string]string // an operator's, never a node's own
	if len(call.To.Labels) > 0 {
		if labels, err = c.labels(ctx); err != nil {
			return nil, nil, err
		}
	}
	s := &Sent{keys: map[string]string{}, secrets: call.Secrets}
	for _, p := range live {
		s.keys[p.Node] = p.ActionKey
		if call.To.All || (len(call.To.Labels) > 0 && matches(labels[p.Node], call.To.Labels)) {
			s.Nodes = append(s.Nodes, p.Node)
		}
	}
	for _, n := range call.To.Nodes {
		switch {
		case slices.Contains(s.Nodes, n), slices.Contains(s.NotAlive, n):
		case live[n] != nil:
			s.Nodes = append(s.Nodes, n)
		default:
			s.NotAlive = append(s.NotAlive, n)
		}
	}
	slices.Sort(s.Nodes)
	slices.Sort(s.NotAlive)
	if len(s.Nodes)+len(s.NotAlive) == 0 {
		return nil, nil, ErrNoTargets
	}
	if len(call.Secrets) > 0 { // no key, no request
		keyed := func(n string) bool { return s.keys[n] != "" }
		s.NoKey = slices.DeleteFunc(slices.Concat(s.Nodes, s.NotAlive), keyed)
		s.Nodes = slices.DeleteFunc(s.Nodes, func(n string) bool { return !keyed(n) })
		s.NotAlive = nil
	}
	now := time.Now().UTC()
	if c.opts.Signer != nil && call.Timing.Deadline.IsZero() {
		call.Timing.Deadline = now.Add(DefaultSignedDeadline)
	}
	if c.opts.Signer != nil {
		if s.binding, err = c.binding(ctx); err != nil {
			return nil, nil, err
		}
	}
	if s.ReplyKey, err = api.NewKey(); err != nil {
		return nil, nil, err
	}
	s.ID, s.action = id, call.Action
	req := &api.Request{
		ID: s.ID, Action: call.Action, Params: call.Params, By: call.By, Created: now,
		Deadline: call.Timing.Deadline, Timeout: api.Duration(call.Timing.Timeout), ReplyKey: s.ReplyKey.Public(),
	}
	s.retention = retentionOf(call)
	return s, req, nil
}

// retentionOf is how long etcd keeps the call's requests and replies.
func retentionOf(call Call) time.Duration {
	if call.Timing.Retention <= 0 {
		return DefaultRetention
	}
	return call.Timing.Retention
}

// checkCall refuses a call that could never be sent, before anything is
// asked of etcd.
func checkCall(call Call) error {
	if call.Action == "" {
		return errors.New("no action named")
	}
	for _, n := range call.To.Nodes {
		if err := api.CheckName("node", n); err != nil {
			return err
		}
	}
	for k := range call.Secrets {
		if _, ok := call.Params[k]; ok {
			return fmt.Errorf("parameter %s is given both in clear and as a secret", k)
		}
	}
	return nil
}

// binding is the cluster a signed request is for: the prefix and etcd's
// cluster ID, read once.
func (c *Client) binding(ctx context.Context) (api.Binding, error) {
	c.mu.Lock()
	id := c.clusterID
	c.mu.Unlock()
	if id == 0 {
		resp, err := c.cli.Get(ctx, c.keys.AllActionsPrefix(), clientv3.WithCountOnly()) // a key every caller may read
		if err != nil {
			return api.Binding{}, fmt.Errorf("read the cluster ID to sign for: %w", err)
		}
		id = resp.Header.ClusterId
		c.mu.Lock()
		c.clusterID = id
		c.mu.Unlock()
	}
	return api.NewBinding(c.opts.Prefix, id), nil
}

// alive returns the presence of the nodes a call may address: every alive
// node for labels or all, else only the named ones (one request).
func (c *Client) alive(ctx context.Context, call Call) (map[string]*api.Presence, error) {
	nodes := call.To.Nodes
	if call.To.All || len(call.To.Labels) > 0 {
		var err error
		if nodes, err = c.aliveNodes(ctx); err != nil {
			return nil, err
		}
	}
	return c.presence(ctx, nodes)
}

// aliveNodes lists the nodes with an alive key, from the keys alone.
func (c *Client) aliveNodes(ctx context.Context) ([]string, error) {
	prefix := c.keys.NodesPrefix()
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	var nodes []string
	for _, kv := range resp.Kvs {
		if node, ok := strings.CutSuffix(strings.TrimPrefix(string(kv.Key), prefix), "/alive"); ok && c.keys.AliveKey(node) == string(kv.Key) {
			nodes = append(nodes, node)
		}
	}
	return nodes, nil
}

// presence reads the alive keys of nodes: the presence of those alive.
func (c *Client) presence(ctx context.Context, nodes []string) (map[string]*api.Presence, error) {
	out := map[string]*api.Presence{}
	for chunk := range slices.Chunk(nodes, api.MaxTxnOps) {
		ops := make([]clientv3.Op, 0, len(chunk))
		for _, n := range chunk {
			ops = append(ops, clientv3.OpGet(c.keys.AliveKey(n)))
		}
		resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read the nodes' presence: %w", err)
		}
		for i, n := range chunk {
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
				p := &api.Presence{}
				_ = json.Unmarshal(kvs[0].Value, p)
				p.Node = n // the key's, never what the value claims
				out[n] = p
			}
		}
	}
	return out, nil
}

// labels returns the labels operators gave each node (ccm node label),
// by node: never those a node claims for itself.
func (c *Client) labels(ctx context.Context) (map[string]map[string]string, error) {
	prefix := c.keys.LabelsPrefix()
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	return api.DecodeLabels(c.keys, resp.Kvs), nil
}

// lease returns a lease of the retention period. One lease serves the
// calls of a twenty-fourth of that period, so that a busy caller does not
// grant one per call; a request thus lives between 23/24 of the retention
// and all of it. fresh discards the lease held (revoked by someone).
func (c *Client) lease(ctx context.Context, retention time.Duration, fresh bool) (clientv3.LeaseID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leases[retention]; ok && !fresh && time.Since(l.granted) < retention/24 {
		return l.id, nil
	}
	resp, err := c.cli.Grant(ctx, int64(retention.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("grant the retention lease: %w", err)
	}
	c.leases[retention] = heldLease{id: resp.ID, granted: time.Now()}
	return resp.ID, nil
}

// callLease is the lease a call's put writes on: the call's early lease
// when it has one (then held for the calls after it), else lease's.
func (c *Client) callLease(ctx context.Context, s *Sent, fresh bool) (clientv3.LeaseID, error) {
	if e := s.lease; e != nil && !fresh {
		<-e.done
		c.mu.Lock()
		defer c.mu.Unlock()
		if e.id != 0 {
			if l, ok := c.leases[s.retention]; !ok || time.Since(l.granted) >= s.retention/24 {
				c.leases[s.retention] = heldLease{id: e.id, granted: e.at}
			}
			e.adopted = true
			return e.id, nil
		}
	}
	return c.lease(ctx, s.retention, fresh)
}

// earlyLease is a call's retention lease, granted while prepare reads the
// nodes' presence, so that a client's first call (a CLI's every call)
// waits for one etcd round trip fewer. It is the call's own until its put
// writes on it (adopted); a call that wrote nothing revokes it.
type earlyLease struct {
	ctx     context.Context
	done    chan struct{}
	id      clientv3.LeaseID // 0 when the grant failed (put grants again)
	at      time.Time
	adopted bool // under Client.mu
}

// leaseEarly starts granting the call's lease, unless the client holds
// one (nil then).
func (c *Client) leaseEarly(ctx context.Context, call Call) *earlyLease {
	retention := retentionOf(call)
	c.mu.Lock()
	l, ok := c.leases[retention]
	c.mu.Unlock()
	if ok && time.Since(l.granted) < retention/24 {
		return nil
	}
	e := &earlyLease{ctx: ctx, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		rctx, cancel := c.request(ctx)
		defer cancel()
		e.at = time.Now()
		if resp, err := c.cli.Grant(rctx, int64(retention.Seconds())); err == nil {
			e.id = resp.ID
		}
	}()
	return e
}

// endLease returns once the call's early grant is over, and revokes its
// lease if no put wrote on it: a call that writes nothing leaves no lease
// for the retention period.
func (c *Client) endLease(e *earlyLease) {
	if e == nil {
		return
	}
	<-e.done
	c.mu.Lock()
	unused := e.id != 0 && !e.adopted
	c.mu.Unlock()
	if !unused {
		return
	}
	ctx, cancel := c.request(context.WithoutCancel(e.ctx))
	defer cancel()
	_, _ = c.cli.Revoke(ctx, e.id) // else it expires with the retention
}

type heldLease struct {
	id      clientv3.LeaseID
	granted time.Time
}

func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// write puts the request for each node, as few transactions as etcd
// allows, and returns the revision of the first. The transactions go out
// together (writers at a time), not one after the other: the nodes each
// one wakes send their claims at once, and a transaction sent after them
// queued behind them (a call to 500 agent processes wrote its last
// requests more than a second after its first).
func (c *Client) write(ctx context.Context, s *Sent, req *api.Request, nodes []string) (int64, error) {
	chunks := slices.Collect(slices.Chunk(nodes, api.MaxTxnOps-1)) // and the call record
	bodies := make([][]string, len(chunks))
	for i, chunk := range chunks {
		bodies[i] = make([]string, len(chunk))
		for j, n := range chunk {
			raw, err := c.body(s, req, n)
			if err != nil {
				return 0, err
			}
			bodies[i][j] = raw
		}
	}
	revs, errs := make([]int64, len(chunks)), make([]error, len(chunks))
	var wg sync.WaitGroup
	sem := make(chan struct{}, writers)
	for i := range chunks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			revs[i], errs[i] = c.put(ctx, s, chunks[i], bodies[i], i == 0)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("write the requests: %w", err)
	}
	if len(revs) == 0 {
		return 0, nil
	}
	return revs[0], nil
}

// writers bounds the transactions of requests a call writes at a time.
const writers = 8

// body is the request for one node: its secrets sealed to the node's key
// (once per node), then signed for the node.
func (c *Client) body(s *Sent, req *api.Request, node string) (string, error) {
	r := *req
	if len(s.secrets) > 0 {
		r.Params = maps.Clone(req.Params)
		if r.Params == nil {
			r.Params = map[string]string{}
		}
		for k, v := range s.secrets {
			sealed, err := api.Seal(s.keys[node], v)
			if err != nil {
				return "", &NodeError{Node: node, Err: ErrNoKey}
			}
			r.Params[k] = sealed
		}
	}
	if c.opts.Signer != nil {
		if err := api.Sign(c.opts.Signer, s.binding, node, &r); err != nil {
			return "", err
		}
	}
	raw, err := json.Marshal(&r)
	return string(raw), err
}

// put writes one transaction of requests on the retention lease, with a
// new lease if the one held was revoked. The first transaction of a write
// carries the call record, if none was written yet; the others, written
// beside it, never touch it.
func (c *Client) put(ctx context.Context, s *Sent, nodes, bodies []string, first bool) (int64, error) {
	ctx, cancel := c.request(ctx)
	defer cancel()
	for fresh := false; ; fresh = true {
		lease, err := c.callLease(ctx, s, fresh)
		if err != nil {
			return 0, err
		}
		ops := make([]clientv3.Op, 0, len(nodes)+1)
		for i, n := range nodes {
			ops = append(ops, clientv3.OpPut(c.keys.ActionKey(n, s.ID), bodies[i], clientv3.WithLease(lease)))
		}
		var record []clientv3.Op
		if first {
			record = c.record(s, lease)
		}
		resp, err := c.cli.Txn(ctx).Then(append(ops, record...)...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && !fresh {
			continue
		}
		if errors.Is(err, rpctypes.ErrPermissionDenied) && len(record) > 0 {
			// A role from before call records: the call goes on without
			// one, and Get and Resume find its requests by a scan.
			c.mu.Lock()
			c.noRecords = true
			c.mu.Unlock()
			resp, err = c.cli.Txn(ctx).Then(ops...).Commit()
		}
		if err != nil {
			return 0, err
		}
		if first {
			s.recorded = true
		}
		return resp.Header.Revision, nil
	}
}

// record is the put of the call record, for the call's first
// transaction: every node the call addresses, on the requests' lease.
func (c *Client) record(s *Sent, lease clientv3.LeaseID) []clientv3.Op {
	c.mu.Lock()
	skip := c.noRecords
	c.mu.Unlock()
	if skip || s.recorded {
		return nil
	}
	raw, _ := json.Marshal(api.CallRecord{Action: s.action, Nodes: slices.Concat(s.Nodes, s.NotAlive), Created: time.Now().UTC()})
	return []clientv3.Op{clientv3.OpPut(c.keys.CallKey(s.ID), string(raw), clientv3.WithLease(lease))}
}

// waiter follows one node's reply and presence.
type waiter struct {
	node, id      string
	replies, gone clientv3.WatchChan
	cancel        context.CancelFunc
}

// watch starts following the reply and the presence of each node, and
// returns once etcd has created every watch: a watch created before the
// request is written sees the reply at once, where one that starts from a
// past revision waits for etcd's catch-up loop (up to 100 ms). Many
// nodes share one watch (watchShared).
func (c *Client) watch(ctx context.Context, id string, nodes []string) ([]*waiter, error) {
	if len(nodes) >= sharedWatchMin {
		return c.watchShared(ctx, id, nodes)
	}
	return c.watchEach(ctx, id, nodes)
}

// watchEach is watch with two watches per node: its reply and its
// presence.
func (c *Client) watchEach(ctx context.Context, id string, nodes []string) ([]*waiter, error) {
	var ws []*waiter
	for _, n := range nodes {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ws = append(ws, &waiter{node: n, id: id, cancel: cancel,
			replies: c.cli.Watch(wctx, c.keys.ReplyKey(n, id), clientv3.WithFilterDelete(), clientv3.WithCreatedNotify()),
			gone:    c.cli.Watch(wctx, c.keys.AliveKey(n), clientv3.WithFilterPut(), clientv3.WithCreatedNotify()),
		})
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	for _, w := range ws {
		for _, ch := range []clientv3.WatchChan{w.replies, w.gone} {
			select {
			case wr, ok := <-ch:
				if err := wr.Err(); err != nil || !ok {
					for _, w := range ws {
						w.cancel()
					}
					return nil, fmt.Errorf("watch the replies: %w", errors.Join(err, ctx.Err()))
				}
			case <-rctx.Done():
				for _, w := range ws {
					w.cancel()
				}
				return nil, fmt.Errorf("watch the replies: %w", rctx.Err())
			}
		}
	}
	return ws, nil
}

// earlyWatches are the watches of a call to named nodes only, all sent at
// once, opened while the call's nodes are resolved: the call saves the
// round trip of opening them after.
type earlyWatches struct {
	done    chan struct{}
	waiters []*waiter
	err     error
}

// watchEarly opens the watches of the named nodes of call, when the call
// names its nodes only and sends to them at once; else it returns nil.
func (c *Client) watchEarly(ctx context.Context, id string, call Call) *earlyWatches {
	if len(call.To.Nodes) == 0 || call.To.All || len(call.To.Labels) > 0 || (call.FanOut.Batch > 0 && call.FanOut.Batch < len(call.To.Nodes)) {
		return nil
	}
	e := &earlyWatches{done: make(chan struct{})}
	nodes := slices.Compact(slices.Sorted(slices.Values(call.To.Nodes)))
	go func() {
		defer close(e.done)
		e.waiters, e.err = c.watch(ctx, id, nodes)
	}()
	return e
}

// take returns the early watches of the nodes sent to, and closes the
// others (nodes not alive, or without a key).
func (e *earlyWatches) take(send []string) ([]*waiter, error) {
	if e == nil {
		return nil, nil
	}
	<-e.done
	var out []*waiter
	for _, w := range e.waiters {
		if slices.Contains(send, w.node) {
			out = append(out, w)
		} else {
			w.cancel()
		}
	}
	return out, e.err
}

// discard closes every early watch.
func (e *earlyWatches) discard() { _, _ = e.take(nil) }

// await waits for the node's final reply. A node that does not pick the
// request up in time has it withdrawn; a node whose agent goes away while
// it runs is reported lost.
func (w *waiter) await(ctx context.Context, c *Client, pickup time.Duration) result {
	defer w.cancel()
	res := result{node: w.node}
	timer := time.NewTimer(pickup)
	defer timer.Stop()
	picked := false
	gone := w.gone
	for {
		select {
		case <-ctx.Done():
			res.err = ctx.Err()
			if !picked { // a request nobody waits for any more must not run later
				wctx, cancel := c.request(context.WithoutCancel(ctx))
				defer cancel()
				if _, err := c.withdraw(wctx, w.node, w.id); err != nil {
					res.err = errors.Join(res.err, err)
				}
			}
			return res
		case wr := <-w.replies:
			if err := wr.Err(); err != nil {
				res.err = err
				return res
			}
			for _, ev := range wr.Events {
				var r api.Reply
				if json.Unmarshal(ev.Kv.Value, &r) != nil {
					continue
				}
				if api.Final(r.State) {
					res.reply = r
					return res
				}
				picked = true
			}
		case wr := <-gone:
			if len(wr.Events) == 0 {
				continue
			}
			if picked {
				res.err = ErrNodeLost
				return res
			}
			gone = nil // not picked up yet: the pickup timeout decides
		case <-timer.C:
			if picked {
				continue
			}
			withdrawn, err := c.withdraw(ctx, w.node, w.id)
			if err != nil {
				res.err = err
				return res
			}
			if withdrawn {
				res.err = ErrNoPickup
				return res
			}
			picked = true // its reply is on its way
		}
	}
}

// withdraw deletes a request its node has not claimed. It reports false
// when the node claimed it first.
func (c *Client) withdraw(ctx context.Context, node, id string) (bool, error) {
	ctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(c.keys.ReplyKey(node, id)), "=", 0)).
		Then(clientv3.OpDelete(c.keys.ActionKey(node, id))).Commit()
	if err != nil {
		return false, fmt.Errorf("withdraw the request to %s: %w", node, err)
	}
	return resp.Succeeded, nil
}
