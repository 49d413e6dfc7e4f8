package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/metrics"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/runkind"
)

// statusTimeout bounds the status and flag writes that end a run; they are
// made even during shutdown.
const statusTimeout = 10 * time.Second

// ErrHalted is returned when the failure flag stopped the run.
var ErrHalted = errors.New("halted by the failure flag")

// ErrNotRecorded is returned when the run ended but its status, or the
// failure flag after a failure, could not be written (etcd unreachable,
// lock lost): the outcome is not known to the cluster, so the run must be
// repeated once etcd answers.
var ErrNotRecorded = errors.New("run outcome not recorded in etcd")

// ErrPaused is returned when the rollout is paused (ccm pause).
var ErrPaused = errors.New("the rollout is paused")

// ErrLockTimeout is returned when the lock was not had within
// Request.LockTimeout.
var ErrLockTimeout = errors.New("lock not acquired in time")

// Applier runs configurations; *applier.Applier is the one ccm uses. The
// context carries the lock's fence (applier.WithFence).
type Applier interface {
	Run(ctx context.Context, kind runkind.Kind, set *configs.Set, snap *objects.Snapshot, names []string) *applier.Report
}

// Options configures a Runner. Cluster, Applier and Node are required.
type Options struct {
	Cluster *cluster.Cluster
	Applier Applier
	Node    string
	Logger  *zap.Logger
	Metrics *metrics.Metrics // nil: not recorded
	// CrashFile is where a run leaves its mark until it returns (crash.go):
	// the agent sets it in its state directory; "" counts no crash.
	CrashFile string
}

// Runner runs a node's turns. It is not safe for concurrent use: a node
// takes one turn at a time.
type Runner struct {
	opts Options
	log  *zap.Logger
	// converged is the last converged revision; -1 until read from the
	// node's status.
	converged int64
}

// New returns a Runner.
func New(opts Options) *Runner {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Runner{opts: opts, log: log, converged: -1}
}

// Request is one run.
type Request struct {
	Set   *configs.Set
	Names []string // in dependency order
	// Kind is runkind.Full to check every file on disk (start, resync,
	// resume, reload, apply --once); for runkind.Changed only what changed
	// is rendered and files this node wrote are trusted.
	Kind runkind.Kind
	// Snapshot returns the objects, at least as new as rev (the revision
	// at which the lock holder read the flag).
	Snapshot func(ctx context.Context, rev int64) (*objects.Snapshot, error)
	// LockTimeout bounds the wait for the lock, and nothing else; zero
	// waits as long as ctx allows.
	LockTimeout time.Duration
	// Reason says why the run happens, for the log.
	Reason string
	// Target, when set, returns the change the run converges: the
	// revision of the newest object event seen (see cluster.Session.Lock;
	// it decides who is a canary).
	Target func() int64
	// Halt, when closed during the run, stops it before its next
	// configuration: another node raised the failure flag (with batches,
	// nodes run side by side).
	Halt <-chan struct{}
	// Begin, when set, is called under the lock once the flag and the
	// pause let the run go, before the snapshot: where the agent checks
	// that what it prepared is still what the cluster asks for, and
	// switches to it. An error ends the run before anything is applied,
	// as one that could not start. gate holds the release pointer as read
	// with the lock.
	Begin func(ctx context.Context, gate cluster.Gate) error
	// Release is the configuration release the run converges ("" for
	// the node's --config-dir); the node's status records it.
	Release string
	// Broken, when set, is why the configuration the run must converge (a
	// promoted release) could not be loaded: the run applies nothing and
	// fails with it under the lock, which raises the flag.
	Broken error
}

// BrokenRelease is the configuration a failure names when a promoted
// release could not be loaded (Request.Broken): no configuration can
// have this name.
const BrokenRelease = "(release)"

// Result is how a run ended.
type Result struct {
	// Ran is set when the run got past the lock and the flag check.
	Ran    bool
	Status api.Status
	Report *applier.Report
	// Failure is the flag that halted the run, read at FlagRevision;
	// Paused is the pause that held it back.
	Failure      *api.Failure
	Paused       *api.Pause
	FlagRevision int64
	// LockLost is set when the session ended during the run.
	LockLost bool
	// Err is why the run could not happen or failed; nil when it
	// converged.
	Err error
}

// Next is what the caller of a run does next: the one reading of a Result,
// for the agent's loop, the ccm.converge action and ccm apply --once.
type Next int

const (
	// Done: the batch is over. It converged, or it failed and raised the
	// flag (which reaches the agent through its watch).
	Done Next = iota
	// Requeue: the flag or the pause held the run back; the same batch
	// runs once they clear.
	Requeue
	// RequeueAll: the run was aborted mid-way (the lock lost, a stop);
	// everything runs again, on a new session if the lock was lost.
	RequeueAll
	// Retry: the run could not start (etcd unreachable, the lock not
	// had); the same batch after the backoff.
	Retry
	// RetryAll: the run ended but etcd did not record its outcome;
	// everything after the backoff, so that the status and the flag are
	// written.
	RetryAll
	// Exit: a template that cannot be stopped spins in a goroutine; the
	// process must end (the flag is raised, so a new one stays halted).
	Exit
)

// Next says what happens after this run.
func (r Result) Next() Next {
	switch {
	case r.Failure != nil || r.Paused != nil:
		return Requeue
	case !r.Ran:
		return Retry
	case errors.Is(r.Err, render.ErrStuck):
		return Exit
	case errors.Is(r.Err, ErrNotRecorded):
		return RetryAll
	case r.Status.Result == api.ResultFailed:
		return Done
	case r.Report != nil && r.Report.Aborted:
		return RequeueAll
	}
	return Done
}

// Converged returns the last revision this node converged, as the Runner
// knows it (-1 before its first run).
func (r *Runner) Converged() int64 { return r.converged }

// Run takes the lock on s, runs req and releases the lock.
func (r *Runner) Run(ctx context.Context, s *cluster.Session, req Request) Result {
	waited := time.Now()
	lockCtx, cancel := ctx, context.CancelFunc(func() {})
	if req.LockTimeout > 0 {
		lockCtx, cancel = context.WithTimeoutCause(ctx, req.LockTimeout, fmt.Errorf("%w (--lock-timeout %s)", ErrLockTimeout, req.LockTimeout))
	}
	lock, err := s.Lock(lockCtx, req.Target)
	if err != nil && context.Cause(lockCtx) != nil && ctx.Err() == nil {
		err = context.Cause(lockCtx)
	}
	cancel()
	if err != nil {
		return Result{Err: err}
	}
	defer func() {
		if err := lock.Release(); err != nil {
			r.log.Warn("release lock", zap.Error(err))
		}
	}()
	if m := r.opts.Metrics; m != nil {
		m.LockWait.Observe(time.Since(waited).Seconds())
	}
	r.log.Info("lock acquired", zap.String("reason", req.Reason), zap.Strings("configurations", req.Names),
		zap.Duration("waited", time.Since(waited)))
	return r.locked(ctx, lock, req)
}

// locked is the run once the lock is held.
func (r *Runner) locked(ctx context.Context, lock *cluster.Lock, req Request) Result {
	start := time.Now()
	gate := lock.Gate()
	rev := gate.Revision
	r.readConverged(ctx)
	if f := gate.Failure; f != nil {
		res := r.halt(ctx, lock, f, req.Release)
		res.FlagRevision = rev
		return res
	}
	if p := gate.Pause; p != nil {
		r.log.Info("the rollout is paused; nothing applied", zap.String("by", p.By), zap.String("reason", p.Reason))
		return Result{Paused: p, FlagRevision: rev, Err: fmt.Errorf("%w by %s since %s (%s); ccm resume --pause lifts it", ErrPaused, p.By, p.Time.Format(time.RFC3339), p.Reason)}
	}
	if req.Begin != nil {
		if err := req.Begin(ctx, gate); err != nil {
			return Result{Err: err}
		}
	}
	snap, err := req.Snapshot(ctx, rev)
	if err != nil {
		return Result{Err: err}
	}
	for _, err := range snap.Ignored {
		r.log.Warn("ignored key", zap.Error(err))
	}
	// The quarantine records as read with the lock: this node's own are
	// written under it, and another's record that arrives during the run
	// binds the next one, as a record written just after a read would.
	quarantines := gate.Quarantines
	retry := r.retried(quarantines, req.Names)
	full := snap
	snap = Hold(snap, slices.DeleteFunc(slices.Clone(quarantines), func(q api.Quarantine) bool { return retry[q.Object()] }))
	if req.Broken != nil {
		report := &applier.Report{Revision: snap.Revision, Err: req.Broken,
			Outcomes: []applier.Outcome{{Config: BrokenRelease, Result: applier.Failed, Error: req.Broken.Error()}}}
		res := Result{Ran: true, Report: report, Status: r.status(report, start, req.Release)}
		res.Err = r.record(ctx, lock, &res)
		return res
	}
	crashed, done, err := r.crashGuard(snap.Revision)
	if err != nil {
		return Result{Err: err}
	}
	if crashed != nil {
		res := Result{Ran: true, Report: crashed, Status: r.status(crashed, start, req.Release)}
		res.Err = r.record(ctx, lock, &res)
		return res
	}
	defer done()
	runCtx, stop := lock.Context(ctx)
	haltCtx, halt := context.WithCancelCause(runCtx)
	defer halt(nil)
	if req.Halt != nil {
		go func() {
			select {
			case <-req.Halt:
				halt(fmt.Errorf("%w: another node failed", ErrHalted))
			case <-haltCtx.Done():
			}
		}()
	}
	runCtx = haltCtx
	// Fencing reaches the disk: before each rename and each command the
	// applier asks whether this node still holds the lock.
	report := r.opts.Applier.Run(applier.WithFence(runCtx, lock.Fence), req.Kind, req.Set, snap, req.Names)
	if len(retry) > 0 && errors.Is(report.Err, render.ErrEveryObject) && runCtx.Err() == nil {
		// The objects tried again fail with every other one: the
		// configuration's fault, not theirs. Hold them as before.
		r.log.Info("objects held by this node's quarantine failed again with every other object: held again", zap.Strings("objects", slices.Sorted(maps.Keys(retry))))
		retry = nil
		snap = Hold(full, quarantines)
		report = r.opts.Applier.Run(applier.WithFence(runCtx, lock.Fence), req.Kind, req.Set, snap, req.Names)
	}
	if m := r.opts.Metrics; m != nil {
		m.RunDuration.Observe(time.Since(start).Seconds())
	}
	lost := errors.Is(context.Cause(runCtx), cluster.ErrLockLost) || lock.Fence() != nil
	stop()
	res := Result{Ran: true, Report: report, LockLost: lost, Status: r.status(report, start, req.Release)}
	if !lost {
		res.Status.Quarantined = r.quarantine(ctx, lock, report, snap, quarantines, retry)
		if m := r.opts.Metrics; m != nil {
			m.Quarantined.Set(float64(len(res.Status.Quarantined)))
		}
	}
	res.Err = r.record(ctx, lock, &res)
	return res
}

// Hold returns snap holding back every object that a quarantine record
// names at its revision: what a run skips, and what a plan shows it skips.
func Hold(snap *objects.Snapshot, qs []api.Quarantine) *objects.Snapshot {
	if len(qs) == 0 {
		return snap
	}
	held := map[string]int64{}
	for _, q := range qs {
		held[q.Object()] = max(held[q.Object()], q.Revision)
	}
	return snap.Hold(held)
}

// retried returns the objects of this node's quarantine records that a
// run of names tries again: those whose configuration runs (for any
// change, and every one at a full run). Another node's record holds by
// its revision rule alone: its node tries the object again.
func (r *Runner) retried(qs []api.Quarantine, names []string) map[string]bool {
	retry := map[string]bool{}
	for _, q := range qs {
		if q.Node == r.opts.Node && slices.Contains(names, q.Configuration) {
			retry[q.Object()] = true
		}
	}
	return retry
}

// cleanIn reports whether report ran object's configuration config to
// the end without holding object: a clean render and check.
func cleanIn(report *applier.Report, config, object string) bool {
	if slices.Contains(report.Held, object) {
		return false
	}
	for _, o := range report.Outcomes {
		if o.Config == config {
			return o.Result == applier.Changed || o.Result == applier.Unchanged
		}
	}
	return false
}

// quarantine records, under the lock, the objects this run found bad, and
// lifts this node's records that hold nothing any more: the object
// changed, is gone, or was tried again (retry) and rendered and checked
// clean. A record that cannot be written is only logged: the next node
// finds the object bad on its own. It returns every object held back now,
// by any node's record or by this run, sorted.
func (r *Runner) quarantine(ctx context.Context, lock *cluster.Lock, report *applier.Report, snap *objects.Snapshot, existing []api.Quarantine, retry map[string]bool) []string {
	now := time.Now().UTC()
	var add []api.Quarantine
	held := map[string]bool{}
	for _, q := range report.Quarantined {
		if held[q.Type+"/"+q.ID] { // failed in two configurations
			continue
		}
		add = append(add, api.Quarantine{Type: q.Type, ID: q.ID, Revision: q.Revision, Configuration: q.Config, Error: q.Error, Time: now})
		held[q.Type+"/"+q.ID] = true
	}
	var lift []string
	for _, q := range existing {
		rev, ok := revisionOf(snap, q.Type, q.ID)
		switch {
		case held[q.Object()]: // found bad again
		case retry[q.Object()] && cleanIn(report, q.Configuration, q.Object()):
			lift = append(lift, q.Object())
		case ok && q.Holds(rev):
			held[q.Object()] = true
		case q.Node == r.opts.Node && !held[q.Object()]:
			lift = append(lift, q.Object())
		}
	}
	list := slices.Sorted(maps.Keys(held))
	if len(add)+len(lift) == 0 {
		return list
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	if err := lock.Quarantine(wctx, add, lift); err != nil {
		r.log.Warn("record quarantine", zap.Error(err))
		return list
	}
	for _, q := range add {
		r.log.Warn("object quarantined", zap.String("object", q.Object()), zap.Int64("revision", q.Revision),
			zap.String("configuration", q.Configuration), zap.String("error", q.Error))
	}
	for _, o := range lift {
		r.log.Info("quarantine lifted", zap.String("object", o))
	}
	return list
}

// revisionOf is the revision of an object in snap, malformed or not.
func revisionOf(snap *objects.Snapshot, typ, id string) (int64, bool) {
	for _, o := range snap.List(typ) {
		if o.ID == id {
			return o.Revision, true
		}
	}
	for _, err := range snap.Invalid[typ] {
		var oe *objects.ObjectError
		if errors.As(err, &oe) && oe.ID == id {
			return oe.Revision, true
		}
	}
	return 0, false
}

// readConverged learns the node's last converged revision from its status
// once, so that a one-shot run or a restarted agent keeps it.
func (r *Runner) readConverged(ctx context.Context) {
	if r.converged >= 0 {
		return
	}
	s, err := r.opts.Cluster.Status(ctx, r.opts.Node)
	if err != nil {
		return
	}
	r.converged = 0
	if s != nil {
		r.converged = s.Converged
	}
}

// status describes a finished run.
func (r *Runner) status(report *applier.Report, start time.Time, release string) api.Status {
	s := api.Status{Node: r.opts.Node, Revision: report.Revision, Time: time.Now().UTC(), Release: release,
		Duration: time.Since(start).Round(time.Millisecond).String()}
	for _, o := range report.Outcomes {
		s.Configurations = append(s.Configurations, api.Outcome{Config: o.Config, Result: string(o.Result),
			Created: o.Created, Updated: o.Updated, Removed: o.Removed, Error: o.Error})
	}
	switch {
	case report.Failed():
		s.Result, s.Error = api.ResultFailed, report.Err.Error()
	case report.Aborted:
		s.Result, s.Error = api.ResultAborted, abortCause(report)
	default:
		s.Result = api.ResultConverged
		r.converged = max(r.converged, report.Revision)
	}
	s.Converged = max(r.converged, 0)
	return s
}

func abortCause(r *applier.Report) string {
	for _, o := range r.Outcomes {
		if o.Result == applier.Aborted {
			return o.Error
		}
	}
	return ""
}

// record writes the status and, after a failure, the flag, both fenced by
// the lock, and releases the lock with the status; it updates the metrics
// and returns the run's error.
func (r *Runner) record(ctx context.Context, lock *cluster.Lock, res *Result) error {
	s, report := res.Status, res.Report
	r.observe(s.Result, report)
	log := r.log.With(zap.String("result", s.Result), zap.Int64("revision", s.Revision), zap.String("took", s.Duration))
	if report.Failed() {
		log.Error("run failed", zap.Error(report.Err))
	} else {
		log.Info("run finished")
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	if report.Failed() { // the flag first: it stops the other nodes
		config, msg := report.FirstFailure()
		f := api.Failure{Node: r.opts.Node, Configuration: config, Error: msg, Revision: report.Revision, Time: s.Time}
		if err := lock.SetFailure(wctx, f); err != nil {
			return errors.Join(report.Err, fmt.Errorf("%w: could not raise the failure flag: %w", ErrNotRecorded, err))
		}
	}
	// The status and the lock's release are one commit (Lock.Finish);
	// if it fails, Run's Release still releases.
	statusErr := lock.Finish(wctx, s)
	switch {
	case report.Failed():
		return fmt.Errorf("%w; failure flag set", report.Err)
	case statusErr != nil:
		return fmt.Errorf("%w: %w", ErrNotRecorded, statusErr)
	case report.Aborted:
		return fmt.Errorf("run aborted before every configuration ran: %s", s.Error)
	}
	return nil
}

// halt records that the flag stops this node.
func (r *Runner) halt(ctx context.Context, lock *cluster.Lock, f *api.Failure, release string) Result {
	r.log.Warn("halted by the failure flag", zap.String("flag_node", f.Node), zap.String("configuration", f.Configuration))
	r.observe(api.ResultHalted, nil)
	s := api.Status{Node: r.opts.Node, Result: api.ResultHalted, Converged: max(r.converged, 0), Time: time.Now().UTC(), Release: release,
		Error: fmt.Sprintf("failure flag set by %s (configuration %s)", f.By(), f.Configuration)}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	if err := lock.Finish(wctx, s); err != nil {
		r.log.Warn("write status", zap.Error(err))
	}
	return Result{Status: s, Failure: f,
		Err: fmt.Errorf("%w (set by %s, configuration %s: %s)", ErrHalted, f.By(), f.Configuration, f.Error)}
}

// observe updates the metrics for a run that ended with result.
func (r *Runner) observe(result string, report *applier.Report) {
	m := r.opts.Metrics
	if m == nil {
		return
	}
	m.Runs.WithLabelValues(result).Inc()
	if result == api.ResultHalted {
		m.Halted.Set(1)
	}
	if report == nil {
		return
	}
	if result == api.ResultConverged {
		m.LastSuccess.SetToCurrentTime()
	}
	for _, o := range report.Outcomes {
		m.ChangedFiles.Add(float64(o.Created + o.Updated + o.Removed))
		if o.Result == applier.Failed {
			m.Failures.Inc()
		}
	}
}
