package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/follow"
	"github.com/ccm-dev/ccm/internal/metrics"
)

// DefaultBuiltinTimeout bounds a built-in action without a request timeout.
const DefaultBuiltinTimeout = 10 * time.Minute

// Builtin is an action the agent answers itself. Its output becomes the
// reply's output; an error fails the reply.
type Builtin func(ctx context.Context, req *api.Request) (any, error)

// Options configures an Engine. Client, Node and Handlers are required.
type Options struct {
	Client *clientv3.Client
	Prefix string
	Node   string
	// Env is added to every handler's environment (CCM_NODE, CCM_ROOT).
	Env []string
	// Handlers returns the loaded handler files; SIGHUP swaps them.
	Handlers func() *Handlers
	Builtins map[string]Builtin
	// BuiltinParams names the parameters a built-in action takes; any
	// other is refused, and one without an entry takes none.
	BuiltinParams map[string][]string
	// Serial runs fn holding the cluster lock, for serial handlers.
	Serial func(ctx context.Context, fn func()) error
	// Retention is how long etcd keeps the node's replies
	// (api.DefaultRetention when 0).
	Retention time.Duration
	// Keys returns the only keys whose signed requests run
	// (--action-keys; SIGHUP reloads them). nil, or a nil result: etcd
	// RBAC alone decides who may call.
	Keys func() *AuthorizedKeys
	// NodeKey opens secret parameters.
	NodeKey *api.Key
	// StateDir holds the journal of the requests the node started (none:
	// the journal lives in memory, and a restart forgets it).
	StateDir string
	// Cgroups, when set, gives each handler run a cgroup of its own
	// (ResolveCgroups); else the run's process group contains it.
	Cgroups *Cgroups
	// Instance names this agent's state directory in the replies it
	// claims, so that a restarted agent recognises its own claims (a
	// random one when empty).
	Instance string
	Logger   *zap.Logger
	Metrics  *metrics.Metrics
}

// Engine is the node side of actions: it claims the requests addressed to
// its node, runs them, and replies.
type Engine struct {
	opts    Options
	keys    api.Keys
	log     *zap.Logger
	m       *metrics.Metrics
	journal *journal
	cluster atomic.Uint64 // etcd's cluster ID, for signatures

	mu       sync.Mutex
	slots    map[string]chan struct{} // per action, sized by concurrency
	leases   map[time.Duration]heldLease
	inflight map[string]bool // held by this engine: being claimed, or claimed and not yet replied
	wg       sync.WaitGroup  // claimed requests
}

type heldLease struct {
	id      clientv3.LeaseID
	granted time.Time
}

// NewEngine returns an Engine; Run starts it.
func NewEngine(opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.Retention == 0 {
		opts.Retention = api.DefaultRetention
	}
	if opts.Instance == "" {
		opts.Instance = api.NewID(time.Now())
	}
	return &Engine{opts: opts, keys: api.NewKeys(opts.Prefix), log: opts.Logger, m: opts.Metrics,
		slots: map[string]chan struct{}{}, leases: map[time.Duration]heldLease{}, inflight: map[string]bool{}}
}

// Run opens the node's journal, settles the requests a previous agent
// left claimed, then answers every request addressed to the node: those
// that arrived while it was down, then each as it arrives. It returns
// when ctx is done and every request it started has replied; a request
// still waiting for its turn is handed back, to run at the next start.
func (e *Engine) Run(ctx context.Context) {
	defer e.wg.Wait()
	delay := follow.Backoff()
	for ctx.Err() == nil {
		err := e.open(ctx)
		if err == nil {
			break
		}
		e.log.Warn("actions: open the journal and settle the requests left claimed; will retry", zap.Error(err), zap.Duration("in", delay.Next()))
		delay.Wait(ctx)
	}
	if e.journal == nil {
		return
	}
	defer e.journal.close()
	follow.New(e.opts.Client, (*requests)(e), follow.Options{
		Name: "actions", Key: e.keys.ActionsPrefix(e.opts.Node), Prefix: true,
		WatchOptions: []clientv3.OpOption{clientv3.WithFilterDelete()}, Logger: e.log,
	}).Run(ctx)
}

// open reads the journal and settles every reply still running, left by
// an agent that stopped: one that started (the journal says so) is
// interrupted and never runs again; one this node claimed but never
// started is left to Reset, which runs it; one claimed by another
// instance (another state directory) may have run, and is interrupted.
func (e *Engine) open(ctx context.Context) error {
	if e.journal == nil {
		j, err := openJournal(e.opts.StateDir, time.Now())
		if err != nil {
			return err
		}
		e.journal = j
		if e.opts.Cgroups != nil {
			if n := e.opts.Cgroups.sweep(); n > 0 {
				e.log.Warn("actions: killed what the runs of a stopped agent left", zap.Int("cgroups", n), zap.String("dir", e.opts.Cgroups.Dir))
			}
		}
	}
	resp, err := e.opts.Client.Get(ctx, e.keys.RepliesPrefix(e.opts.Node), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	e.cluster.Store(resp.Header.ClusterId)
	for _, kv := range resp.Kvs {
		var r api.Reply
		if json.Unmarshal(kv.Value, &r) != nil || r.State != api.StateRunning {
			continue
		}
		started := e.journal.has(r.ID)
		if !started && r.Instance == e.opts.Instance {
			continue // never started: Reset runs it, or says why not
		}
		r.State, r.Finished = api.StateInterrupted, time.Now().UTC()
		r.Error = "the agent stopped while this request ran; it is never run again"
		if !started {
			r.Error = "claimed by another agent instance of this node, which stopped; it may have run, and is never run again"
		}
		if _, err := e.write(ctx, string(kv.Key), kv.ModRevision, clientv3.LeaseID(kv.Lease), r); err != nil {
			return err
		}
		action := "unknown"
		if req, err := e.opts.Client.Get(ctx, e.keys.ActionKey(e.opts.Node, r.ID)); err == nil && len(req.Kvs) > 0 {
			var rq api.Request
			if json.Unmarshal(req.Kvs[0].Value, &rq) == nil {
				action = rq.Action
			}
		}
		e.log.Warn("action interrupted by the agent's stop", zap.String("id", r.ID), zap.String("action", action))
		e.m.Actions.WithLabelValues(action, api.StateInterrupted).Inc()
	}
	return nil
}

// replyTimeout bounds the writes of a final reply once its handler
// ended, the agent's shutdown included.
const replyTimeout = 30 * time.Second

// requests is the Engine as the follower of the node's requests.
type requests Engine

// Reset answers every request without a final reply, as read at rev:
// those that arrived while the agent was down, or while the watch was
// broken past a compaction, and those this node claimed but never
// started (an agent killed while they waited their turn, or a claim
// whose response was lost).
func (r *requests) Reset(ctx context.Context, kvs []*mvccpb.KeyValue, rev int64, _ string) error {
	e := (*Engine)(r)
	resp, err := e.opts.Client.Get(ctx, e.keys.RepliesPrefix(e.opts.Node), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	e.cluster.Store(resp.Header.ClusterId)
	replied := map[string]bool{}
	for _, kv := range resp.Kvs {
		replied[strings.TrimPrefix(string(kv.Key), e.keys.RepliesPrefix(e.opts.Node))] = true
	}
	var open, doubt []*mvccpb.KeyValue
	for _, kv := range kvs {
		id := strings.TrimPrefix(string(kv.Key), e.keys.ActionsPrefix(e.opts.Node))
		switch {
		case !replied[id]:
			open = append(open, kv)
		case e.journal.has(id) || e.claimed(id): // it ran, or runs now: settled
		default: // a final reply, or one this node claimed and never started
			doubt = append(doubt, kv)
		}
	}
	taken, err := e.neverStartedOf(ctx, doubt)
	if err != nil {
		return err
	}
	return e.handleAll(ctx, append(open, taken...))
}

// neverStartedOf returns the requests among kvs whose reply says this
// instance claimed them and never started them, reading the replies in
// as few transactions as etcd allows.
func (e *Engine) neverStartedOf(ctx context.Context, kvs []*mvccpb.KeyValue) ([]*mvccpb.KeyValue, error) {
	var out []*mvccpb.KeyValue
	for chunk := range slices.Chunk(kvs, api.MaxTxnOps) {
		ops := make([]clientv3.Op, 0, len(chunk))
		for _, kv := range chunk {
			ops = append(ops, clientv3.OpGet(e.keys.ReplyKey(e.opts.Node, strings.TrimPrefix(string(kv.Key), e.keys.ActionsPrefix(e.opts.Node)))))
		}
		resp, err := e.opts.Client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read the replies: %w", err)
		}
		for i, kv := range chunk {
			if r := resp.Responses[i].GetResponseRange().Kvs; len(r) > 0 && e.neverStarted(r[0]) {
				out = append(out, kv)
			}
		}
	}
	return out, nil
}

// Apply answers each request as it is written. A request handled twice
// (a watch resumed after an error) is claimed once: claim refuses the
// second.
func (r *requests) Apply(ctx context.Context, resp clientv3.WatchResponse) error {
	kvs := make([]*mvccpb.KeyValue, 0, len(resp.Events))
	for _, ev := range resp.Events {
		kvs = append(kvs, ev.Kv)
	}
	return (*Engine)(r).handleAll(ctx, kvs)
}

// claimers bounds the requests handled at once: a flood of requests is
// claimed (or rejected) concurrently, not one round trip after another.
const claimers = 16

// handleAll handles requests concurrently, in an order fair across their
// callers (fairOrder), and returns every error.
func (e *Engine) handleAll(ctx context.Context, kvs []*mvccpb.KeyValue) error {
	if len(kvs) == 1 {
		return e.handle(ctx, kvs[0])
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, claimers)
	)
	for _, kv := range fairOrder(kvs) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := e.handle(ctx, kv); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// fairOrder interleaves requests by caller, the signing key's or else
// the claimed by, keeping each caller's own order: one caller's flood
// does not make every other caller wait behind it.
func fairOrder(kvs []*mvccpb.KeyValue) []*mvccpb.KeyValue {
	var callers []string
	queues := map[string][]*mvccpb.KeyValue{}
	for _, kv := range kvs {
		c := callerOf(kv.Value)
		if _, ok := queues[c]; !ok {
			callers = append(callers, c)
		}
		queues[c] = append(queues[c], kv)
	}
	out := make([]*mvccpb.KeyValue, 0, len(kvs))
	for len(out) < len(kvs) {
		for _, c := range callers {
			if q := queues[c]; len(q) > 0 {
				out = append(out, q[0])
				queues[c] = q[1:]
			}
		}
	}
	return out
}

// callerOf names who a request comes from, for fairness only (nothing is
// verified): the fingerprint of the key its signature names, or its by.
func callerOf(raw []byte) string {
	if len(raw) > MaxRequestBytes {
		return ""
	}
	var r struct {
		By        string `json:"by"`
		Signature string `json:"signature"`
	}
	if json.Unmarshal(raw, &r) != nil {
		return ""
	}
	if sig, err := sshsig.Unarmor([]byte(r.Signature)); err == nil {
		return ssh.FingerprintSHA256(sig.PublicKey)
	}
	return "by:" + r.By
}

// MaxRequestBytes bounds a request: a larger one is rejected before it is
// parsed.
const MaxRequestBytes = 512 << 10

// maxReason bounds the error of a rejection, so that it always fits in
// its reply.
const maxReason = 2 << 10

// handle decides what to do with one request: reject it, or claim it and
// start it. An error (etcd unreachable) means the request may still be
// unanswered; the caller lists again.
func (e *Engine) handle(ctx context.Context, kv *mvccpb.KeyValue) error {
	id := strings.TrimPrefix(string(kv.Key), e.keys.ActionsPrefix(e.opts.Node))
	if err := api.CheckName("request id", id); err != nil {
		// Its reply's key would be as bad: no reply, and nothing else
		// waits for it.
		e.log.Warn("action request ignored: its key is no request id", zap.ByteString("key", kv.Key[:min(len(kv.Key), 200)]), zap.Int("key_bytes", len(kv.Key)))
		e.m.Actions.WithLabelValues("unknown", api.StateRejected).Inc()
		return nil
	}
	now := time.Now().UTC()
	req, run, reason := e.accept(id, kv.Value, now)
	if reason != "" {
		if len(reason) > maxReason {
			reason = reason[:maxReason] + fmt.Sprintf(" [%d more bytes]", len(reason)-maxReason)
		}
		rejected := func(takeover bool) api.Reply {
			why := reason
			if takeover {
				why = "never started (claimed before the agent stopped): " + reason
			}
			return api.Reply{ID: id, Node: e.opts.Node, State: api.StateRejected, Error: why, By: run.by(req), Signed: run.grant != nil, Started: now, Finished: now}
		}
		_, ok, err := e.claim(ctx, kv, rejected, 0)
		if ok {
			e.log.Warn("action rejected", zap.String("id", id), zap.String("action", req.Action), zap.String("by", run.by(req)), zap.String("error", reason))
			e.m.Actions.WithLabelValues(req.Action, api.StateRejected).Inc()
		}
		return err
	}
	timeout := run.timeout(req)
	running := func(bool) api.Reply {
		return api.Reply{ID: id, Node: e.opts.Node, State: api.StateRunning, By: run.by(req), Signed: run.grant != nil, Instance: e.opts.Instance, Started: now}
	}
	rev, ok, err := e.claim(ctx, kv, running, timeout)
	if !ok {
		return err
	}
	e.m.ActionsRunning.Inc()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.m.ActionsRunning.Dec()
		defer e.settled(id)
		e.execute(ctx, req, run, rev, timeout, now)
	}()
	return nil
}

// claimed reports whether this engine holds a request now.
func (e *Engine) claimed(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inflight[id]
}

func (e *Engine) settled(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.inflight, id)
}

// runner is what answers an accepted request.
type runner struct {
	handler *Handler
	builtin Builtin
	id      *identity
	// params are the request's, secrets unsealed; secrets are kept out
	// of the reply and the log.
	params  map[string]string
	secrets []string
	// grant is the key that signed the request, when this node requires
	// signatures.
	grant *Grant
}

// by is who the reply and the log name as the caller: the signing key's
// name, or the caller's own claim when the node requires no signature.
func (run runner) by(req *api.Request) string {
	if run.grant != nil {
		return run.grant.Name
	}
	return req.By
}

// timeout is how long the request may run once started.
func (run runner) timeout(req *api.Request) time.Duration {
	if run.handler != nil {
		return timeoutOf(run.handler.Timeout, req)
	}
	return timeoutOf(DefaultBuiltinTimeout, req)
}

// accept checks a request before it is claimed, the cheap checks first.
// It returns the reason to reject it, or what will run it.
func (e *Engine) accept(id string, raw []byte, now time.Time) (*api.Request, runner, string) {
	req := &api.Request{}
	var run runner
	if len(raw) > MaxRequestBytes {
		return req, run, fmt.Sprintf("the request is %d bytes, over the limit of %d", len(raw), MaxRequestBytes)
	}
	if err := json.Unmarshal(raw, req); err != nil {
		return req, run, fmt.Sprintf("the request is not valid JSON: %v", err)
	}
	if req.ID != id {
		return req, run, fmt.Sprintf("the request's id %q is not its key's %q", req.ID, id)
	}
	if e.journal.has(id) {
		return req, run, "this request already ran on this node; a request runs at most once"
	}
	if ak := e.keysNow(); ak != nil {
		g, err := ak.Verify(api.NewBinding(e.opts.Prefix, e.cluster.Load()), e.opts.Node, raw, req, now)
		if err != nil {
			return req, run, err.Error()
		}
		run.grant = g
		// Past its deadline, a signed request is refused below; before
		// it, the journal refuses a replay.
		if req.Deadline.IsZero() || req.Deadline.After(now.Add(e.opts.Retention)) {
			return req, run, fmt.Sprintf("a signed request needs a deadline within the reply retention (%s)", e.opts.Retention)
		}
	}
	if !req.Deadline.IsZero() && now.After(req.Deadline) {
		return req, run, fmt.Sprintf("its deadline %s passed before the node picked it up", req.Deadline.UTC().Format(time.RFC3339))
	}
	if b, ok := e.opts.Builtins[req.Action]; ok {
		allowed := e.opts.BuiltinParams[req.Action]
		for k := range req.Params {
			if !slices.Contains(allowed, k) {
				if len(allowed) == 0 {
					return req, run, fmt.Sprintf("the built-in action %s takes no parameters", req.Action)
				}
				return req, run, fmt.Sprintf("the built-in action %s takes only %s, not %q", req.Action, strings.Join(allowed, ", "), k)
			}
		}
		run.builtin = b
		return req, run, ""
	}
	hs := e.opts.Handlers()
	h, ok := hs.Get(req.Action)
	if !ok {
		known := append(sortedKeys(e.opts.Builtins), hs.Names()...)
		return req, run, fmt.Sprintf("unknown action %q; this node answers: %s", req.Action, strings.Join(known, ", "))
	}
	if h.SecretOutput && req.ReplyKey == "" {
		return req, run, fmt.Sprintf("action %s's output is secret (secret_output): the request needs a reply_key to seal it to (ccm action run and the Go client add one)", h.Name)
	}
	params, secrets, err := h.openSecrets(req.Params, e.opts.NodeKey)
	if err == nil {
		err = h.CheckParams(params)
	}
	if err != nil {
		return req, run, err.Error()
	}
	ident, err := h.identity(params)
	if err != nil {
		return req, run, err.Error()
	}
	run.handler, run.id, run.params, run.secrets = h, ident, params, secrets
	return req, run, ""
}

func (e *Engine) keysNow() *AuthorizedKeys {
	if e.opts.Keys == nil {
		return nil
	}
	return e.opts.Keys()
}

// claim creates the reply, unless one exists or the request was withdrawn
// meanwhile: the one place that makes a request claimed at most once. It
// compares revisions only, so its transaction is never much larger than
// the reply. A running reply this node's instance wrote and never started
// (an agent killed while the request waited its turn, or a claim whose
// response was lost) is taken over, so that the request runs once; reply
// is told whether the claim takes one over. It returns the reply's
// revision.
func (e *Engine) claim(ctx context.Context, kv *mvccpb.KeyValue, reply func(takeover bool) api.Reply, timeout time.Duration) (int64, bool, error) {
	r := reply(false)
	if !e.hold(r.ID) {
		return 0, false, nil // this engine handles it already (the same key twice in one batch)
	}
	rev, ok, err := e.claimHeld(ctx, kv, r, reply, timeout)
	if !ok || r.State != api.StateRunning {
		e.settled(r.ID)
	}
	return rev, ok, err
}

// claimHeld is claim for a request this engine holds.
func (e *Engine) claimHeld(ctx context.Context, kv *mvccpb.KeyValue, r api.Reply, reply func(takeover bool) api.Reply, timeout time.Duration) (int64, bool, error) {
	key := e.keys.ReplyKey(e.opts.Node, r.ID)
	fresh := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	takeover := false
	for range 3 {
		raw, err := json.Marshal(r)
		if err != nil {
			return 0, false, err
		}
		lease := e.leaseFor(ctx, timeout)
		resp, err := e.opts.Client.Txn(ctx).If(fresh, clientv3.Compare(clientv3.CreateRevision(string(kv.Key)), "=", kv.CreateRevision)).
			Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			e.dropLease(lease)
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("claim %s: %w", kv.Key, err)
		}
		if resp.Succeeded {
			return resp.Header.Revision, true, nil
		}
		existing := resp.Responses[0].GetResponseRange().Kvs
		if takeover || len(existing) == 0 || !e.unstarted(existing[0]) {
			return 0, false, nil // claimed, or withdrawn
		}
		takeover = true
		fresh = clientv3.Compare(clientv3.ModRevision(key), "=", existing[0].ModRevision)
		r = reply(true)
	}
	return 0, false, fmt.Errorf("claim %s: its lease was revoked as it was granted", kv.Key)
}

// hold marks a request as this engine's, from its claim to its final
// reply, and reports false if it was already: one handling per request.
func (e *Engine) hold(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight[id] {
		return false
	}
	e.inflight[id] = true
	return true
}

// unstarted reports whether a reply is one this node's instance claimed
// and never started: running, by this instance, and not in the journal.
func (e *Engine) unstarted(kv *mvccpb.KeyValue) bool {
	var r api.Reply
	if json.Unmarshal(kv.Value, &r) != nil || r.State != api.StateRunning || r.Instance != e.opts.Instance {
		return false
	}
	return !e.journal.has(r.ID)
}

// neverStarted is unstarted, for a request this engine does not hold now.
func (e *Engine) neverStarted(kv *mvccpb.KeyValue) bool {
	if !e.unstarted(kv) {
		return false
	}
	var r api.Reply
	_ = json.Unmarshal(kv.Value, &r)
	return !e.claimed(r.ID)
}

// leaseFor is the lease a reply lives on: one that outlives the request's
// run by the retention. It is granted anew every twenty-fourth of the
// retention, per timeout rounded up to the minute, so that a busy node
// does not grant one per request. Not the request's lease: etcd lets a key
// join a lease only if its writer may write every key on the lease, and a
// node may not write requests.
func (e *Engine) leaseFor(ctx context.Context, timeout time.Duration) clientv3.LeaseID {
	timeout = (timeout + time.Minute - 1).Truncate(time.Minute)
	window := e.opts.Retention / 24
	e.mu.Lock()
	defer e.mu.Unlock()
	if l, ok := e.leases[timeout]; ok && time.Since(l.granted) < window {
		return l.id
	}
	ttl := e.opts.Retention + timeout + window
	resp, err := e.opts.Client.Grant(ctx, int64(ttl/time.Second)+1)
	if err != nil {
		e.log.Warn("actions: grant a retention lease; the reply is kept without one", zap.Error(err))
		return 0
	}
	e.leases[timeout] = heldLease{id: resp.ID, granted: time.Now()}
	return resp.ID
}

// dropLease forgets a lease etcd no longer has (revoked by hand), so that
// the next reply gets a new one.
func (e *Engine) dropLease(id clientv3.LeaseID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for t, l := range e.leases {
		if l.id == id {
			delete(e.leases, t)
		}
	}
}

// journalMargin is how long past its deadline (or its reply's life) the
// journal keeps a request.
const journalMargin = time.Hour

// start records a request in the journal, durably, then runs it: nothing
// runs that the journal does not hold.
func (e *Engine) start(req *api.Request, timeout time.Duration, run func() outcome) outcome {
	until := time.Now().Add(timeout + e.opts.Retention)
	if req.Deadline.After(until) {
		until = req.Deadline
	}
	first, err := e.journal.record(req.ID, until.Add(journalMargin))
	switch {
	case err != nil:
		return outcome{state: api.StateFailed, err: "not started: " + err.Error()}
	case !first:
		return outcome{state: api.StateRejected, err: "this request already ran on this node; a request runs at most once"}
	}
	return run()
}

// execute runs a claimed request in its turn and writes the final reply.
// A request still waiting for its turn when the agent stops is handed
// back (its reply deleted), so that the next start runs it.
func (e *Engine) execute(ctx context.Context, req *api.Request, run runner, rev int64, timeout time.Duration, started time.Time) {
	replyKey := e.keys.ReplyKey(e.opts.Node, req.ID)
	concurrency := 1 // a built-in runs one at a time
	if run.handler != nil {
		concurrency = run.handler.Concurrency
	}
	release, err := e.turn(ctx, req.Action, concurrency)
	if err != nil {
		e.handBack(replyKey, rev, req)
		return
	}
	var o outcome
	switch {
	case run.builtin != nil:
		o = e.start(req, timeout, func() outcome { return e.builtin(ctx, req, run.builtin) })
	case run.handler.Serial && e.opts.Serial != nil:
		inv := e.invocation(req, run)
		err := e.opts.Serial(ctx, func() { o = e.start(req, timeout, inv.run) })
		if err != nil && ctx.Err() != nil { // stopping while it waited for the lock: it never started
			release()
			e.handBack(replyKey, rev, req)
			return
		}
		if err != nil {
			o = outcome{state: api.StateFailed, err: fmt.Sprintf("cluster lock for a serial action: %v", err)}
		}
	default:
		o = e.start(req, timeout, e.invocation(req, run).run)
	}
	release()
	o.stdout, o.stderr, o.err = redact(o.stdout, run.secrets), redact(o.stderr, run.secrets), string(redact([]byte(o.err), run.secrets))
	reply := api.Reply{ID: req.ID, Node: e.opts.Node, State: o.state, ExitCode: o.exitCode, Output: outputJSON(o.stdout), Error: o.err,
		By: run.by(req), Signed: run.grant != nil, Instance: e.opts.Instance, Started: started, Finished: time.Now().UTC()}
	secretOutput := run.handler != nil && run.handler.SecretOutput
	if secretOutput {
		reply.SealTo(req.ReplyKey)
		o.stderr, o.err = nil, "[sealed]"
	}
	e.final(ctx, replyKey, rev, reply)
	took := reply.Finished.Sub(started)
	e.m.Actions.WithLabelValues(req.Action, o.state).Inc()
	e.m.ActionDuration.WithLabelValues(req.Action).Observe(took.Seconds())
	fields := []zap.Field{zap.String("id", req.ID), zap.String("action", req.Action), zap.String("by", reply.By),
		zap.String("state", o.state), zap.Duration("took", took)}
	if run.grant != nil {
		fields = append(fields, zap.String("signed_by", run.grant.Name))
	}
	if len(o.stderr) > 0 {
		fields = append(fields, zap.ByteString("stderr", o.stderr))
	}
	if o.state == api.StateSucceeded {
		e.log.Info("action finished", fields...)
	} else {
		e.log.Warn("action finished", append(fields, zap.String("error", o.err))...)
	}
}

// final writes a final reply over the running one, on a lease that keeps
// it the retention from now. A running reply that is gone (its lease
// revoked by hand) is written anew; one someone else changed is left, and
// the outcome is logged.
func (e *Engine) final(ctx context.Context, key string, rev int64, reply api.Reply) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replyTimeout)
	defer cancel()
	delay := follow.Backoff()
	for {
		lease := e.leaseFor(wctx, 0)
		ok, err := e.write(wctx, key, rev, lease, reply)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			e.dropLease(lease)
			continue
		}
		if err == nil && !ok && rev != 0 {
			e.log.Warn("actions: the running reply is gone; writing the final reply anew", zap.String("id", reply.ID))
			rev = 0
			continue
		}
		if err == nil && !ok {
			e.log.Error("actions: the reply was written by someone else; this log alone has the outcome", zap.String("id", reply.ID), zap.String("state", reply.State))
		}
		if err == nil || wctx.Err() != nil {
			return
		}
		e.log.Warn("actions: write reply; will retry", zap.String("id", reply.ID), zap.Error(err), zap.Duration("in", delay.Next()))
		delay.Wait(wctx)
	}
}

func (e *Engine) invocation(req *api.Request, run runner) *invocation {
	return &invocation{handler: run.handler, req: req, params: run.params, id: run.id, timeout: run.timeout(req), env: e.opts.Env, cgroups: e.opts.Cgroups}
}

// turn waits for one of an action's n concurrency slots.
func (e *Engine) turn(ctx context.Context, action string, n int) (func(), error) {
	e.mu.Lock()
	slot := e.slots[action]
	if cap(slot) != n { // new, or changed by a reload
		slot = make(chan struct{}, n)
		e.slots[action] = slot
	}
	e.mu.Unlock()
	select {
	case slot <- struct{}{}:
		return func() { <-slot }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// handBack deletes the running reply of a request that never started, so
// that the next start runs it.
func (e *Engine) handBack(replyKey string, rev int64, req *api.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := e.opts.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(replyKey), "=", rev)).
		Then(clientv3.OpDelete(replyKey)).Commit()
	if err != nil {
		e.log.Warn("actions: hand back a request that did not start; it will be reported interrupted", zap.String("id", req.ID), zap.Error(err))
		return
	}
	e.log.Info("action handed back at stop; it runs at the next start", zap.String("id", req.ID), zap.String("action", req.Action))
}

// builtin runs a built-in action.
func (e *Engine) builtin(ctx context.Context, req *api.Request, b Builtin) outcome {
	ctx, cancel := context.WithTimeout(ctx, timeoutOf(DefaultBuiltinTimeout, req))
	defer cancel()
	out, err := b(ctx, req)
	if err != nil {
		code := 1
		return outcome{state: api.StateFailed, exitCode: &code, err: err.Error()}
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return outcome{state: api.StateFailed, err: err.Error()}
	}
	return outcome{state: api.StateSucceeded, exitCode: new(int), stdout: raw}
}

func timeoutOf(def time.Duration, req *api.Request) time.Duration {
	if t := time.Duration(req.Timeout); t > 0 && t < def {
		return t
	}
	return def
}

// write replaces the reply at key if it is still at revision rev (or
// creates it, with rev 0), and reports whether it did.
func (e *Engine) write(ctx context.Context, key string, rev int64, lease clientv3.LeaseID, r api.Reply) (bool, error) {
	raw, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	resp, err := e.opts.Client.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}
