package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/cluster"
	"github.com/ccm-dev/ccm/follow"
	"github.com/ccm-dev/ccm/metrics"
	"github.com/ccm-dev/ccm/objects"
)

// DefaultRetention is how long requests and replies stay in etcd.
const DefaultRetention = 24 * time.Hour

// DefaultBuiltinTimeout bounds a built-in action without a request timeout.
const DefaultBuiltinTimeout = 10 * time.Minute

// Builtin is an action the agent answers itself. Its output becomes the
// reply's output; an error fails the reply.
type Builtin func(ctx context.Context, req *Request) (any, error)

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
	// Serial runs fn holding the cluster lock, for serial handlers.
	Serial func(ctx context.Context, fn func()) error
	// Retention is how long etcd keeps the node's replies
	// (DefaultRetention when 0).
	Retention time.Duration
	// Keys returns the only keys whose signed requests run
	// (--action-keys; SIGHUP reloads them). nil, or a nil result: etcd
	// RBAC alone decides who may call.
	Keys func() *AuthorizedKeys
	// NodeKey opens secret parameters.
	NodeKey *NodeKey
	Logger  *zap.Logger
	Metrics *metrics.Metrics
}

// Engine is the node side of actions: it claims the requests addressed to
// its node, runs them, and replies.
type Engine struct {
	opts Options
	keys cluster.Keys
	log  *zap.Logger
	m    *metrics.Metrics

	mu    sync.Mutex
	slots map[string]chan struct{} // per action, sized by concurrency
	lease clientv3.LeaseID         // for requests without a lease
	since time.Time
	wg    sync.WaitGroup // claimed requests
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
		opts.Retention = DefaultRetention
	}
	return &Engine{opts: opts, keys: cluster.NewKeys(opts.Prefix), log: opts.Logger, m: opts.Metrics, slots: map[string]chan struct{}{}}
}

// Run marks as interrupted the requests a previous agent left running,
// then answers every request addressed to the node: those that arrived
// while it was down, then each as it arrives. It returns when ctx is done
// and every request it started has replied; a request still waiting for
// its turn is handed back, to run at the next start.
func (e *Engine) Run(ctx context.Context) {
	defer e.wg.Wait()
	delay := follow.Backoff()
	for ctx.Err() == nil {
		err := e.interrupted(ctx)
		if err == nil {
			break
		}
		e.log.Warn("actions: recover interrupted requests; will retry", zap.Error(err), zap.Duration("in", delay.Next()))
		delay.Wait(ctx)
	}
	follow.New(e.opts.Client, (*requests)(e), follow.Options{
		Name: "actions", Key: e.keys.ActionsPrefix(e.opts.Node), Prefix: true,
		WatchOptions: []clientv3.OpOption{clientv3.WithFilterDelete()}, Logger: e.log,
	}).Run(ctx)
}

// interrupted rewrites every reply still running, left by an agent that
// died, as interrupted. Those requests are never run again.
func (e *Engine) interrupted(ctx context.Context) error {
	resp, err := e.opts.Client.Get(ctx, e.keys.RepliesPrefix(e.opts.Node), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range resp.Kvs {
		var r Reply
		if json.Unmarshal(kv.Value, &r) != nil || r.State != StateRunning {
			continue
		}
		r.State, r.Finished = StateInterrupted, time.Now().UTC()
		r.Error = "the agent stopped while this request ran; it is never run again"
		if err := e.write(ctx, string(kv.Key), kv.ModRevision, clientv3.LeaseID(kv.Lease), r); err != nil {
			return err
		}
		action := "unknown"
		if req, err := e.opts.Client.Get(ctx, e.keys.ActionKey(e.opts.Node, r.ID)); err == nil && len(req.Kvs) > 0 {
			var rq Request
			if json.Unmarshal(req.Kvs[0].Value, &rq) == nil {
				action = rq.Action
			}
		}
		e.log.Warn("action interrupted by the agent's stop", zap.String("id", r.ID), zap.String("action", action))
		e.m.Actions.WithLabelValues(action, StateInterrupted).Inc()
	}
	return nil
}

// replyTimeout bounds the writes of a final reply once its handler
// ended, the agent's shutdown included.
const replyTimeout = 30 * time.Second

// requests is the Engine as the follower of the node's requests.
type requests Engine

// Reset answers every request without a reply, as read at rev: those
// that arrived while the agent was down, or while the watch was broken
// past a compaction.
func (r *requests) Reset(ctx context.Context, kvs []*mvccpb.KeyValue, rev int64, _ string) error {
	e := (*Engine)(r)
	resp, err := e.opts.Client.Get(ctx, e.keys.RepliesPrefix(e.opts.Node), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return err
	}
	replied := map[string]bool{}
	for _, kv := range resp.Kvs {
		replied[strings.TrimPrefix(string(kv.Key), e.keys.RepliesPrefix(e.opts.Node))] = true
	}
	for _, kv := range kvs {
		if replied[strings.TrimPrefix(string(kv.Key), e.keys.ActionsPrefix(e.opts.Node))] {
			continue
		}
		if err := e.handle(ctx, kv); err != nil {
			return err
		}
	}
	return nil
}

// Apply answers each request as it is written. A request handled twice
// (a watch resumed after an error) is claimed once: claim refuses the
// second.
func (r *requests) Apply(ctx context.Context, resp clientv3.WatchResponse) error {
	e := (*Engine)(r)
	for _, ev := range resp.Events {
		if err := e.handle(ctx, ev.Kv); err != nil {
			return err
		}
	}
	return nil
}

// handle decides what to do with one request: reject it, or claim it and
// start it. An error (etcd unreachable) means the request may still be
// unanswered; the caller lists again.
func (e *Engine) handle(ctx context.Context, kv *mvccpb.KeyValue) error {
	id := strings.TrimPrefix(string(kv.Key), e.keys.ActionsPrefix(e.opts.Node))
	now := time.Now().UTC()
	req, run, reason := e.accept(id, kv.Value, now)
	if reason != "" {
		reply := Reply{ID: id, Node: e.opts.Node, State: StateRejected, Error: reason, Started: now, Finished: now}
		_, ok, err := e.claim(ctx, kv, reply, e.leaseOf(ctx))
		if ok {
			e.log.Warn("action rejected", zap.String("id", id), zap.String("action", req.Action), zap.String("by", req.By), zap.String("error", reason))
			e.m.Actions.WithLabelValues(req.Action, StateRejected).Inc()
		}
		return err
	}
	lease := e.leaseOf(ctx)
	rev, ok, err := e.claim(ctx, kv, Reply{ID: id, Node: e.opts.Node, State: StateRunning, Started: now}, lease)
	if !ok {
		return err
	}
	e.m.ActionsRunning.Inc()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.m.ActionsRunning.Dec()
		e.execute(ctx, req, run, rev, lease, now)
	}()
	return nil
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
	signer  string
}

// accept checks a request before it is claimed. It returns the reason to
// reject it, or what will run it.
func (e *Engine) accept(id string, raw []byte, now time.Time) (*Request, runner, string) {
	req := &Request{}
	if err := json.Unmarshal(raw, req); err != nil {
		return req, runner{}, fmt.Sprintf("the request is not valid JSON: %v", err)
	}
	if err := objects.CheckName("request id", id); err != nil {
		return req, runner{}, err.Error()
	}
	if req.ID != id {
		return req, runner{}, fmt.Sprintf("the request's id %q is not its key's %q", req.ID, id)
	}
	if !req.Deadline.IsZero() && now.After(req.Deadline) {
		return req, runner{}, fmt.Sprintf("its deadline %s passed before the node picked it up", req.Deadline.UTC().Format(time.RFC3339))
	}
	var run runner
	if ak := e.keysNow(); ak != nil {
		// A signed request is replayable until its deadline; its claimed
		// reply blocks that only while the reply lives.
		if req.Deadline.IsZero() || req.Deadline.After(now.Add(e.opts.Retention)) {
			return req, runner{}, fmt.Sprintf("a signed request needs a deadline within the reply retention (%s)", e.opts.Retention)
		}
		who, err := ak.Verify(e.opts.Node, req)
		if err != nil {
			return req, runner{}, err.Error()
		}
		run.signer = who
	}
	if b, ok := e.opts.Builtins[req.Action]; ok {
		if len(req.Params) > 0 {
			return req, runner{}, fmt.Sprintf("the built-in action %s takes no parameters", req.Action)
		}
		run.builtin = b
		return req, run, ""
	}
	hs := e.opts.Handlers()
	h, ok := hs.Get(req.Action)
	if !ok {
		known := append(sortedKeys(e.opts.Builtins), hs.Names()...)
		return req, runner{}, fmt.Sprintf("unknown action %q; this node answers: %s", req.Action, strings.Join(known, ", "))
	}
	params, secrets, err := h.openSecrets(req.Params, e.opts.NodeKey)
	if err == nil {
		err = h.CheckParams(params)
	}
	if err != nil {
		return req, runner{}, err.Error()
	}
	ident, err := h.identity(params)
	if err != nil {
		return req, runner{}, err.Error()
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
// meanwhile: the one place that makes a request run at most once. It
// returns the reply's revision.
func (e *Engine) claim(ctx context.Context, kv *mvccpb.KeyValue, r Reply, lease clientv3.LeaseID) (int64, bool, error) {
	raw, err := json.Marshal(r)
	if err != nil {
		return 0, false, err
	}
	key := e.keys.ReplyKey(e.opts.Node, r.ID)
	resp, err := e.opts.Client.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(string(kv.Key)), "=", kv.CreateRevision),
	).Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		e.dropLease(lease)
	}
	if err != nil {
		return 0, false, fmt.Errorf("claim %s: %w", kv.Key, err)
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// leaseOf is the lease a reply lives on: the engine's retention lease,
// granted anew every twenty-fourth of the retention. Not the request's:
// etcd lets a key join a lease only if its writer may write every key on
// the lease, and a node may not write requests.
func (e *Engine) leaseOf(ctx context.Context) clientv3.LeaseID {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lease != 0 && time.Since(e.since) < e.opts.Retention/24 {
		return e.lease
	}
	resp, err := e.opts.Client.Grant(ctx, int64(e.opts.Retention.Seconds()))
	if err != nil {
		e.log.Warn("actions: grant a retention lease; the reply is kept without one", zap.Error(err))
		return 0
	}
	e.lease, e.since = resp.ID, time.Now()
	return e.lease
}

// dropLease forgets a lease etcd no longer has (revoked by hand), so that
// the next reply gets a new one.
func (e *Engine) dropLease(id clientv3.LeaseID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lease == id {
		e.lease = 0
	}
}

// execute runs a claimed request in its turn and writes the final reply.
// A request still waiting for its turn when the agent stops is handed
// back (its reply deleted), so that the next start runs it.
func (e *Engine) execute(ctx context.Context, req *Request, run runner, rev int64, lease clientv3.LeaseID, started time.Time) {
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
		o = e.builtin(ctx, req, run.builtin)
	case run.handler.Serial && e.opts.Serial != nil:
		inv := e.invocation(req, run)
		err := e.opts.Serial(ctx, func() { o = inv.run() })
		if err != nil && ctx.Err() != nil { // stopping while it waited for the lock: it never started
			release()
			e.handBack(replyKey, rev, req)
			return
		}
		if err != nil {
			o = outcome{state: StateFailed, err: fmt.Sprintf("cluster lock for a serial action: %v", err)}
		}
	default:
		o = e.invocation(req, run).run()
	}
	release()
	o.stdout, o.stderr, o.err = redact(o.stdout, run.secrets), redact(o.stderr, run.secrets), string(redact([]byte(o.err), run.secrets))
	reply := Reply{ID: req.ID, Node: e.opts.Node, State: o.state, ExitCode: o.exitCode, Output: outputJSON(o.stdout), Error: o.err,
		Started: started, Finished: time.Now().UTC()}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replyTimeout)
	defer cancel()
	delay := follow.Backoff()
	for {
		err := e.write(wctx, replyKey, rev, lease, reply)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) { // keep the reply all the same
			e.dropLease(lease)
			lease = e.leaseOf(wctx)
			continue
		}
		if err == nil || wctx.Err() != nil {
			break
		}
		e.log.Warn("actions: write reply; will retry", zap.String("id", req.ID), zap.Error(err), zap.Duration("in", delay.Next()))
		delay.Wait(wctx)
	}
	took := reply.Finished.Sub(started)
	e.m.Actions.WithLabelValues(req.Action, o.state).Inc()
	e.m.ActionDuration.WithLabelValues(req.Action).Observe(took.Seconds())
	fields := []zap.Field{zap.String("id", req.ID), zap.String("action", req.Action), zap.String("by", req.By),
		zap.String("state", o.state), zap.Duration("took", took)}
	if run.signer != "" {
		fields = append(fields, zap.String("signed_by", run.signer))
	}
	if len(o.stderr) > 0 {
		fields = append(fields, zap.ByteString("stderr", o.stderr))
	}
	if o.state == StateSucceeded {
		e.log.Info("action finished", fields...)
	} else {
		e.log.Warn("action finished", append(fields, zap.String("error", o.err))...)
	}
}

func (e *Engine) invocation(req *Request, run runner) *invocation {
	return &invocation{handler: run.handler, req: req, params: run.params, id: run.id, timeout: timeoutOf(run.handler.Timeout, req), env: e.opts.Env}
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
func (e *Engine) handBack(replyKey string, rev int64, req *Request) {
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
func (e *Engine) builtin(ctx context.Context, req *Request, b Builtin) outcome {
	ctx, cancel := context.WithTimeout(ctx, timeoutOf(DefaultBuiltinTimeout, req))
	defer cancel()
	out, err := b(ctx, req)
	if err != nil {
		code := 1
		return outcome{state: StateFailed, exitCode: &code, err: err.Error()}
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return outcome{state: StateFailed, err: err.Error()}
	}
	return outcome{state: StateSucceeded, exitCode: new(int), stdout: raw}
}

func timeoutOf(def time.Duration, req *Request) time.Duration {
	if t := time.Duration(req.Timeout); t > 0 && t < def {
		return t
	}
	return def
}

// write replaces the reply at key if it is still at revision rev.
func (e *Engine) write(ctx context.Context, key string, rev int64, lease clientv3.LeaseID, r Reply) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = e.opts.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).Commit()
	return err
}
