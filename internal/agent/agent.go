package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/debounce"
	"github.com/ccm-dev/ccm/internal/drift"
	"github.com/ccm-dev/ccm/internal/follow"
	"github.com/ccm-dev/ccm/internal/metrics"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/retry"
	"github.com/ccm-dev/ccm/internal/rollout"
	"github.com/ccm-dev/ccm/internal/runkind"
	"github.com/ccm-dev/ccm/internal/schemas"
	"github.com/ccm-dev/ccm/internal/subscriptions"
	"github.com/ccm-dev/ccm/internal/watcher"
)

// Defaults of the agent's timing options.
const (
	DefaultDebounce = 10 * time.Second
	DefaultMaxWait  = 60 * time.Second
	DefaultResync   = time.Hour
	// DefaultStuckAfter is how long the agent may go without being ready
	// (a live session and a synced watch) before /healthz and the
	// watchdog fail: longer than etcd's usual elections and restarts, so
	// that an outage does not restart every agent of the fleet at once.
	DefaultStuckAfter = 3 * time.Minute
)

// Options configures an Agent. Client, Node, ConfigDir, Root and StateDir
// are required; zero MaxWait, LockTTL and Resync take the defaults.
type Options struct {
	Client    *clientv3.Client
	Prefix    string
	Node      string
	Labels    map[string]string
	ConfigDir string
	Root      string
	StateDir  string

	// Debounce is the quiet period before a run triggered by object
	// changes; 0 runs at once. Full runs never wait for it. (The CLI's
	// default is DefaultDebounce.)
	Debounce time.Duration
	MaxWait  time.Duration
	LockTTL  time.Duration
	Resync   time.Duration
	// Liveness is the watch's progress-request period (default 10s).
	Liveness time.Duration
	// Retention is how long etcd keeps the node's replies to actions
	// (api.DefaultRetention when 0).
	Retention time.Duration
	// Cgroup says where handler runs get their cgroups
	// (actions.ResolveCgroups; "" is auto).
	Cgroup string
	// StuckAfter is how long the agent may go without being ready before
	// Healthy fails (DefaultStuckAfter when 0).
	StuckAfter time.Duration
	// ActionKeys is an OpenSSH authorized_keys file: when set, only
	// requests signed by one of its keys run.
	ActionKeys string
	// ReleaseKeys is an OpenSSH authorized_keys file: when set, only
	// releases signed by one of its keys are loaded.
	ReleaseKeys string
	// ReleaseDir is where promoted releases are staged (StateDir/releases
	// when empty). Handlers that run as other users read their scripts
	// from it, so it is not under the 0700 state directory in production.
	ReleaseDir string

	// Drift configures the drift watcher (its zero Mode is off; the
	// CLI's default is repair).
	Drift drift.Options

	Logger  *zap.Logger
	Metrics *metrics.Metrics // nil: a new set
}

// selection is a configuration set with its subscription index, and the
// action handlers. A reload swaps them at once, so a run decides what to
// converge from one value.
type selection struct {
	set      *configs.Set
	subs     *subscriptions.Index
	handlers *actions.Handlers
	keys     *actions.AuthorizedKeys // nil: requests need no signature
	schemas  *schemas.Set
	// release is the configuration release it was loaded from ("" for
	// --config-dir).
	release string
	// stored is why the copy in etcd of release cannot be used while
	// its verified staged copy is (releases.Staged.Stored).
	stored error
	// empty is set for a --config-dir without configurations (or
	// absent): enough to start an agent that waits for a release.
	empty bool
}

// load reads the configuration directory (the configurations and the
// action handlers) and the action keys, every error at once. A directory
// without configurations, or none at all, loads as empty.
func load(dir, keysFile string) (*selection, error) {
	set, err := configs.Load(dir)
	empty := errors.Is(err, configs.ErrNoConfigurations) || errors.Is(err, fs.ErrNotExist)
	if empty {
		set, err = &configs.Set{Dir: dir, Configs: map[string]*configs.Config{}}, nil
	}
	handlers, herr := actions.LoadHandlers(dir)
	sch, serr := schemas.Load(dir)
	var keys *actions.AuthorizedKeys
	var kerr error
	if keysFile != "" {
		if keys, kerr = actions.LoadAuthorizedKeys(keysFile); kerr != nil {
			kerr = fmt.Errorf("--action-keys: %w", kerr)
		}
	}
	if err != nil || herr != nil || serr != nil || kerr != nil {
		return nil, errors.Join(err, herr, serr, kerr)
	}
	subs := make(map[string][]string, len(set.Configs))
	for name, c := range set.Configs {
		subs[name] = c.Types()
	}
	return &selection{set: set, subs: subscriptions.New(subs), handlers: handlers, keys: keys, schemas: sch, empty: empty}, nil
}

// Agent is the per-node service.
type Agent struct {
	opts      Options
	log       *zap.Logger
	metrics   *metrics.Metrics
	cluster   *cluster.Cluster
	applier   *applier.Applier
	runner    *rollout.Runner
	selection atomic.Pointer[selection]
	mirror    *objects.Mirror
	deb       *debounce.Debouncer
	watcher   *watcher.Watcher
	flag      *flagState
	pause     *flagState
	presence  *presence
	health    *health
	drift     *drift.Watcher

	// runMu is held by whatever uses the cluster lock: a run, ccm.converge,
	// a serial action. The lock's key is the session's, so one at a time.
	runMu    sync.Mutex
	nodeKey  *api.Key
	instance string // the state directory's, in presence and action claims
	sessions *sessions
	retry    *retry.Delay // owned by the run loop
	// stop ends Run with a cause: another agent serves this node.
	stop context.CancelCauseFunc

	release     *releaseState
	releaseKeys *actions.AuthorizedKeys // nil: releases need no signature
	releaseDir  *releases.Dir
	// pending is the selection the next run converges, loaded but not
	// adopted yet (owned by whoever holds runMu).
	pending *selection
}

// New loads the configuration directory and returns an Agent. It refuses a
// broken directory. It starts nothing; Run does.
func New(opts Options) (*Agent, error) {
	if opts.Client == nil {
		return nil, errors.New("agent: a client is required")
	}
	if err := api.CheckName("agent: node name", opts.Node); err != nil {
		return nil, err
	}
	defaults(&opts)
	sel, err := load(opts.ConfigDir, opts.ActionKeys)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		opts:    opts,
		log:     opts.Logger.With(zap.String("node", opts.Node)),
		metrics: opts.Metrics,
		cluster: cluster.New(opts.Client, cluster.Options{Prefix: opts.Prefix, Node: opts.Node}),
		mirror:  objects.NewMirror(opts.Prefix),
		deb:     debounce.New(opts.Debounce, opts.MaxWait, nil),
		retry:   follow.Backoff(),
	}
	if opts.ReleaseKeys != "" {
		if a.releaseKeys, err = actions.LoadReleaseKeys(opts.ReleaseKeys); err != nil {
			return nil, fmt.Errorf("--release-keys: %w", err)
		}
	}
	if a.releaseDir, err = releases.OpenDir(opts.ReleaseDir); err != nil {
		return nil, fmt.Errorf("--release-dir: %w", err)
	}
	a.release = newReleaseState(api.NewKeys(opts.Prefix).ReleasePointerKey(), a.releaseChanged)
	a.applier = applier.New(a.applierOptions())
	a.runner = rollout.New(rollout.Options{Cluster: a.cluster, Applier: a.applier, Node: opts.Node, Logger: a.log, Metrics: a.metrics,
		CrashFile: filepath.Join(opts.StateDir, "crash.json")})
	a.flag = newFlagState(a.metrics.Halted, func(key string) bool { _, ok := a.cluster.FailureOf(key); return ok },
		func() { a.deb.AddAll("failure flag cleared") })
	a.pause = newFlagState(a.metrics.Paused, func(key string) bool { return key == a.cluster.PausedKey() },
		func() { a.deb.AddAll("pause lifted") })
	a.presence = newPresence(opts.Labels)
	a.sessions = newSessions(a)
	a.health = newHealth(a.presence.value().Host)
	a.drift = a.newDrift()
	a.watcher = watcher.New(opts.Client, a.mirror, (*events)(a), watcher.Options{
		Prefix: opts.Prefix, Liveness: opts.Liveness, Logger: a.log,
	})
	a.selection.Store(sel)
	a.mirror.SetValidator(sel.schemas)
	a.published(sel.release)
	return a, nil
}

// applierOptions is how this node applies (and plans).
func (a *Agent) applierOptions() applier.Options {
	return applier.Options{
		Root: a.opts.Root, StateDir: a.opts.StateDir, ConfigDir: a.opts.ConfigDir,
		Node:   render.Node{Name: a.opts.Node, Labels: a.opts.Labels},
		Logger: a.log,
	}
}

func defaults(o *Options) {
	if o.Prefix == "" {
		o.Prefix = api.DefaultPrefix
	}
	if o.MaxWait == 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.LockTTL == 0 {
		o.LockTTL = cluster.DefaultLockTTL
	}
	if o.Resync == 0 {
		o.Resync = DefaultResync
	}
	if o.StuckAfter == 0 {
		o.StuckAfter = DefaultStuckAfter
	}
	if o.ReleaseDir == "" {
		o.ReleaseDir = filepath.Join(o.StateDir, "releases")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
}

// Reload loads the configuration directory (and the action handlers)
// again. A broken directory keeps the old one and returns the error; a
// good one converges everything. Under a promoted release it reads no
// --config-dir and asks for a full run of the loaded release, which
// repairs what was changed by hand.
func (a *Agent) Reload() error {
	cur := a.selection.Load()
	if cur.release != "" {
		a.log.Info("a release is promoted: SIGHUP runs it in full and does not read --config-dir", zap.String("release", releases.Short(cur.release)))
		a.deb.AddAll("reload")
		return nil
	}
	sel, err := load(a.opts.ConfigDir, a.opts.ActionKeys)
	return a.reload(cur, sel, err)
}

// reload makes sel (or err), loaded from --config-dir while cur was the
// selection, the selection: by compare-and-swap against cur, so that a
// release a run adopted meanwhile (adopt, under runMu, which Reload does
// not take) is kept, and runs in full.
func (a *Agent) reload(cur, sel *selection, err error) error {
	if a.selection.Load() == cur {
		a.reloaded(err)
	}
	if err != nil {
		a.log.Error("reload failed; keeping the loaded configuration", zap.Error(err))
		return err
	}
	if !a.selection.CompareAndSwap(cur, sel) {
		a.log.Info("a release was adopted while --config-dir was read: keeping it, and running it in full", zap.String("release", releases.Short(a.selection.Load().release)))
		a.deb.AddAll("reload")
		return nil
	}
	a.mirror.SetValidator(sel.schemas)
	a.log.Info("configuration reloaded", zap.Strings("order", sel.set.Order), zap.Strings("actions", sel.handlers.Names()))
	a.deb.AddAll("reload")
	return nil
}

// Ready returns nil when the mirror is synced with etcd and the node is
// announced on a live session.
func (a *Agent) Ready() error {
	if !a.watcher.Synced() {
		if why := a.watcher.Err(); why != "" {
			return fmt.Errorf("object watch not synced with etcd (%s)", why)
		}
		return errors.New("object watch not synced with etcd")
	}
	if a.sessions.live() == nil {
		return fmt.Errorf("no live session with etcd: the node is not announced (%s)", a.sessions.err())
	}
	return nil
}

// healthGrace is added to the longest step a configuration allows (its
// command timeout or render budget) before a silent run counts as stuck.
const healthGrace = 30 * time.Second

// Healthy returns nil while the agent makes progress: it was ready (a
// live session and a synced watch) within StuckAfter, and the main loop is
// idle or its run moved on (a configuration, a file, a command) within
// the longest step a configuration allows. The systemd watchdog and
// /healthz follow it.
func (a *Agent) Healthy() error {
	if d := a.health.notReadyFor(time.Now()); d > a.opts.StuckAfter {
		why := "not ready"
		if err := a.Ready(); err != nil {
			why = err.Error()
		}
		return fmt.Errorf("no progress with etcd for %s (limit --stuck-after %s): %s", d.Round(time.Second), a.opts.StuckAfter, why)
	}
	stalled := a.applier.Stalled()
	if stalled == 0 {
		return nil
	}
	limit := healthGrace
	for _, c := range a.selection.Load().set.Configs {
		limit = max(limit, c.Timeout+healthGrace, c.RenderTimeout+healthGrace)
	}
	if stalled > limit {
		return fmt.Errorf("the run has made no progress for %s (limit %s)", stalled.Round(time.Second), limit)
	}
	return nil
}

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *metrics.Metrics { return a.metrics }

// Run converges until ctx is cancelled, then finishes the configuration
// under way, releases the lock and returns nil. It returns an error at
// once if another agent uses the state directory, or as soon as it finds
// another live agent serving the same node name.
func (a *Agent) Run(ctx context.Context) error {
	unlock, err := lockStateDir(a.opts.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	// Before the lock, and before anything else reads the files: a run
	// a crash interrupted goes back to what the node last converged
	// (applier.RollBackInterrupted says why that needs no lock).
	if rolled, err := a.applier.RollBackInterrupted(); err != nil {
		a.log.Error("roll back the run a crash interrupted; the next run tries again", zap.Error(err))
	} else if len(rolled) > 0 {
		a.log.Warn("rolled back the run a crash interrupted", zap.Strings("configs", rolled))
	}
	if a.nodeKey, err = actions.LoadNodeKey(a.opts.StateDir); err != nil {
		return err
	}
	a.presence.setActionKey(a.nodeKey.Public())
	if a.instance, err = loadInstance(a.opts.StateDir); err != nil {
		return err
	}
	a.presence.setInstance(a.instance)
	if a.opts.ReleaseKeys == "" {
		a.log.Warn(releases.NoKeysWarning)
	}
	if a.opts.ActionKeys == "" {
		a.log.Warn("actions are authenticated by etcd RBAC alone: no --action-keys, so any identity that may write this node's requests may run its actions")
	}
	ctx, a.stop = context.WithCancelCause(ctx)
	bg, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		a.sessions.drop()
	}()
	for _, fn := range []func(context.Context){a.runWatcher, a.watchFlag, a.watchPause, a.resyncLoop, a.readiness, a.sessions.keep, a.runActions, a.watchRelease, a.runDrift} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(bg)
		}()
	}
	for ctx.Err() == nil {
		if err := a.waitGate(ctx); err != nil {
			break
		}
		a.metrics.DebouncePending.Set(float64(a.deb.Pending()))
		batch, err := a.deb.Next(ctx)
		if err != nil {
			break
		}
		// Paused during the wait: keep the changes, take no lock. (A flag
		// raised meanwhile is met under the lock, so that the node reports
		// halted.)
		if !a.pause.isClear() {
			a.deb.Requeue(batch)
			continue
		}
		a.metrics.DebouncePending.Set(float64(a.deb.Pending()))
		a.runMu.Lock()
		err = a.converge(ctx, batch)
		a.runMu.Unlock()
		if err != nil {
			a.stop(err)
		}
	}
	if err := context.Cause(ctx); errors.Is(err, cluster.ErrNodeTaken) || errors.Is(err, render.ErrStuck) {
		a.log.Error("stopping the agent", zap.Error(err))
		return err
	}
	return nil
}

// waitGate blocks while the failure flag is set or the rollout paused.
func (a *Agent) waitGate(ctx context.Context) error {
	for {
		if err := a.flag.waitClear(ctx); err != nil {
			return err
		}
		if err := a.pause.waitClear(ctx); err != nil {
			return err
		}
		if a.flag.isClear() {
			return nil
		}
	}
}

// lockStateDir takes an exclusive lock on the state directory for as long
// as the agent runs, so that a second agent started by mistake on the same
// node fails at once (and never revokes the first one's lease).
func lockStateDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "agent.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("state directory %s is in use by another ccm agent: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

func (a *Agent) runWatcher(ctx context.Context) {
	if err := a.watcher.Run(ctx); err != nil {
		a.log.Error("watcher stopped", zap.Error(err))
	}
}

// resyncLoop asks for a converge of everything every Resync, repairing
// local drift.
func (a *Agent) resyncLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.deb.AddAll("resync")
		}
	}
}

// lagEvery is how many readiness ticks (seconds) pass between two
// measurements of the watch lag, which costs an etcd request: an idle
// agent should rarely make one.
const lagEvery = 10

// readiness mirrors Ready (every second) and the watch lag (every
// lagEvery seconds) into the metrics.
func (a *Agent) readiness(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for tick := 0; ; tick++ {
		ready := 0.0
		err := a.Ready()
		if err == nil {
			ready = 1
		}
		a.metrics.Ready.Set(ready)
		a.health.observe(ctx, a, err, time.Now())
		if tick%lagEvery == 0 {
			lctx, cancel := context.WithTimeout(ctx, lagTimeout)
			if lag, err := a.watcher.Lag(lctx); err == nil {
				a.metrics.WatchLag.Set(float64(lag))
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaseFile is where the agent records its session's lease, to revoke it
// after a crash.
func (a *Agent) leaseFile() string { return filepath.Join(a.opts.StateDir, "session.lease") }

// describe formats a batch for logs.
func describe(b debounce.Batch) string {
	if b.Kind == runkind.Full {
		return fmt.Sprintf("everything (%v)", b.Reasons)
	}
	return fmt.Sprintf("types %v", b.Types)
}
