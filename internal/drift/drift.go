package drift

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/metrics"
)

// Mode is what the agent does about drift.
type Mode int

// The modes of --drift. The zero value is Off, so that an agent built
// without saying stays as before; the CLI's default is Repair.
const (
	Off Mode = iota
	// Watch reports drift (log, metrics, status) and changes nothing.
	Watch
	// Repair restores drifted paths from the last converged render.
	Repair
)

// ParseMode reads --drift.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "off":
		return Off, nil
	case "watch":
		return Watch, nil
	case "repair":
		return Repair, nil
	}
	return Off, fmt.Errorf("%q: must be off, watch or repair", s)
}

func (m Mode) String() string {
	switch m {
	case Watch:
		return "watch"
	case Repair:
		return "repair"
	}
	return "off"
}

// Repairer checks paths against the last converged render and, with fix,
// restores those that differ; the agent's serialises it with runs.
type Repairer interface {
	Managed() applier.Managed
	Repair(ctx context.Context, reals []string, fix bool) *applier.RepairReport
}

// Defaults of Options.
const (
	DefaultQuiet      = 100 * time.Millisecond
	DefaultMaxWait    = time.Second
	DefaultScanEvery  = 30 * time.Second
	DefaultRefresh    = time.Second
	DefaultStorm      = 5
	DefaultWindow     = 10 * time.Minute
	DefaultMaxBackoff = 5 * time.Minute
	DefaultFullEvery  = 10 * time.Second
	// backoffBase is the first delay of a path in backoff.
	backoffBase = 10 * time.Second
)

// Options configures a Watcher; zero values take the defaults.
type Options struct {
	Mode Mode
	// Quiet is how long no event must arrive before a batch is checked;
	// MaxWait bounds how long a batch waits under a stream of events.
	Quiet, MaxWait time.Duration
	// MaxWatches caps the inotify watches (0: only the kernel's
	// fs.inotify.max_user_watches); past it, directories are scanned.
	MaxWatches int
	// ScanEvery is the period of the scan of directories without a watch.
	ScanEvery time.Duration
	// Refresh is how often the managed set is compared with the last one
	// watched (an atomic load when nothing changed).
	Refresh time.Duration
	// Storm repairs of one path within Window put it in backoff, starting
	// at 10s and doubling up to MaxBackoff.
	Storm      int
	Window     time.Duration
	MaxBackoff time.Duration
	// FullEvery is the least time between two full checks: a flood of
	// events that overflows the queue again and again (a customer's
	// loop in a watched directory) makes one full check per FullEvery,
	// not one per batch.
	FullEvery time.Duration
	// Faults injects the kernel's failure modes (tests).
	Faults Faults
	Logger *zap.Logger
	// Metrics receives ccm_drift_*; nil: not recorded.
	Metrics *metrics.Metrics
}

// Faults injects what the kernel does under load, so that tests can make
// it happen on purpose.
type Faults struct {
	// Overflow, when it returns true for the path of an event, drops that
	// event and the rest of its read and delivers IN_Q_OVERFLOW instead,
	// as the kernel does when its queue (fs.inotify.max_queued_events) is
	// full.
	Overflow func(real string) bool
	// Init, when set, is the error inotify_init1 fails with, as it does
	// with EMFILE past fs.inotify.max_user_instances.
	Init error
}

func (o *Options) defaults() {
	o.Quiet = positive(o.Quiet, DefaultQuiet)
	o.MaxWait = positive(o.MaxWait, DefaultMaxWait)
	o.ScanEvery = positive(o.ScanEvery, DefaultScanEvery)
	o.Refresh = positive(o.Refresh, DefaultRefresh)
	o.Storm = positive(o.Storm, DefaultStorm)
	o.Window = positive(o.Window, DefaultWindow)
	o.MaxBackoff = positive(o.MaxBackoff, DefaultMaxBackoff)
	o.FullEvery = positive(o.FullEvery, DefaultFullEvery)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// positive is v, or def where v is zero or negative (a ticker panics on
// either).
func positive[T ~int | ~int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Repaired is the last drift a Watcher found.
type Repaired struct {
	Config string    `json:"config"`
	Path   string    `json:"path"`
	What   []string  `json:"what"`
	Time   time.Time `json:"time"`
	// Fixed is false in watch mode, or when the repair failed.
	Fixed bool `json:"fixed"`
}

// Status is what a Watcher reports.
type Status struct {
	Mode    string `json:"mode"`
	Watches int    `json:"watches"`
	// Scanned is how many directories are scanned for want of a watch.
	Scanned int `json:"scanned,omitempty"`
	// Repairs counts the paths repaired (or, in watch mode, found).
	Repairs int       `json:"repairs"`
	Last    *Repaired `json:"last,omitempty"`
	// Backoff lists the paths repaired too often, sorted.
	Backoff []string `json:"backoff,omitempty"`
	// FullChecks counts checks of every managed path (overflow).
	FullChecks int `json:"full_checks,omitempty"`
	// Overflows counts the kernel's queue overflows seen.
	Overflows int `json:"overflows,omitempty"`
}

// Watcher watches the managed paths and repairs their drift.
type Watcher struct {
	opts Options
	log  *zap.Logger
	rep  Repairer
	// onStatus, when set, is called after the status changed.
	onStatus func(Status)

	mu     sync.Mutex
	status Status
}

// New returns a Watcher; Run starts it. onStatus (optional) is called from
// Run's goroutine each time the status changes.
func New(rep Repairer, opts Options, onStatus func(Status)) *Watcher {
	opts.defaults()
	return &Watcher{opts: opts, log: opts.Logger, rep: rep, onStatus: onStatus, status: Status{Mode: opts.Mode.String()}}
}

// Status returns what the watcher reports now.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.Backoff = slices.Clone(s.Backoff)
	return s
}

func (w *Watcher) update(fn func(*Status)) {
	w.mu.Lock()
	fn(&w.status)
	s := w.status
	w.mu.Unlock()
	if w.onStatus != nil {
		w.onStatus(s)
	}
}

// history is the repairs of one path.
type history struct {
	times []time.Time // within Window
	until time.Time   // in backoff until then
	delay time.Duration
}

// loop is the state of one Run, owned by its goroutine.
type loop struct {
	w        *Watcher
	in       *inotify
	managed  []string // sorted real paths
	set      map[string]bool
	gen      uint64
	pending  map[string]bool
	first    time.Time
	last     time.Time
	hist     map[string]*history
	deferred map[string]bool // in backoff, waiting for until
	limitLog bool            // the watch limit was logged
	rewatch  bool            // a watched directory went away, or one is missing
	dirs     map[string]bool // the directories of the managed paths
	missing  map[string]bool // those that did not exist at the last refresh
	refused  map[string]bool // those whose watch failed otherwise (logged once)
	lastFull time.Time       // the last full check
	fullOwed bool            // an overflow came within FullEvery of it
}

// Run watches until ctx is cancelled. In mode Off it returns at once.
func (w *Watcher) Run(ctx context.Context) error {
	if w.opts.Mode == Off {
		return nil
	}
	in, err := openInotify(w.opts.Faults)
	if err != nil {
		// Out of instances (fs.inotify.max_user_instances, EMFILE): no
		// watch at all, every directory is scanned.
		w.log.Warn("drift: no inotify instance; every managed directory is scanned every --drift-scan instead. Raise the limit with sysctl -w fs.inotify.max_user_instances=N (and in /etc/sysctl.d)",
			zap.Error(err), zap.Duration("scan_every", w.opts.ScanEvery))
		in = noInotify()
	}
	events := make(chan []event, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		in.read(ctx, events)
	}()
	defer func() {
		in.close()
		wg.Wait()
	}()
	l := &loop{w: w, in: in, pending: map[string]bool{}, hist: map[string]*history{}, deferred: map[string]bool{}, refused: map[string]bool{}}
	l.refresh()
	refresh := time.NewTicker(w.opts.Refresh)
	defer refresh.Stop()
	scan := time.NewTicker(w.opts.ScanEvery)
	defer scan.Stop()
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case evs, ok := <-events:
			if !ok {
				events = nil // no instance, or it was closed: scans go on
				continue
			}
			l.handle(evs)
		case <-refresh.C:
			l.refresh()
			l.due(time.Now())
		case <-scan.C:
			l.verify(l.in.dirs())
			l.scan()
		case <-flush.C:
		}
		now := time.Now()
		if len(l.pending) == 0 {
			continue
		}
		if now.Sub(l.last) >= w.opts.Quiet || now.Sub(l.first) >= w.opts.MaxWait {
			l.flush(ctx, now)
			continue
		}
		flush.Reset(min(l.last.Add(w.opts.Quiet).Sub(now), l.first.Add(w.opts.MaxWait).Sub(now)))
	}
}

// refresh watches the directories of the managed paths when they changed
// (or a watched directory went away, or one was missing), and drops the
// watches no longer needed. The paths of a directory watched again are
// checked: what happened to them while it had no watch has no event.
func (l *loop) refresh() {
	m := l.w.rep.Managed()
	changed := m.Generation != l.gen
	if !changed && !l.rewatch {
		return
	}
	first := l.set == nil
	l.rewatch = false
	if changed {
		l.gen, l.managed = m.Generation, m.Paths
		l.set = make(map[string]bool, len(m.Paths))
		l.dirs = map[string]bool{}
		for _, p := range m.Paths {
			l.set[p] = true
			l.dirs[path.Dir(p)] = true
		}
	}
	added, missing := l.watch(l.dirs)
	if !first {
		for _, d := range added {
			l.add(l.under(d)...)
		}
	}
	gone := map[string]bool{}
	for _, d := range missing {
		gone[d] = true
		if !l.missing[d] { // newly missing: its paths are drift
			l.add(l.under(d)...)
		}
	}
	l.missing = gone
	l.rewatch = len(missing) > 0 // tried again at the next tick, until it is back
}

// watch makes the watches exactly dirs, within the limit; it returns the
// directories it added a watch for, and those that do not exist.
func (l *loop) watch(dirs map[string]bool) (added, missing []string) {
	for _, d := range l.in.dirs() {
		if !dirs[d] {
			l.in.remove(d)
		}
	}
	unwatched := 0
	limit := l.w.opts.MaxWatches
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if l.in.watched(d) {
			continue
		}
		if limit > 0 && l.in.count() >= limit {
			l.limited(fmt.Errorf("--drift-max-watches %d reached", limit))
			unwatched++
			continue
		}
		err := l.in.add(d)
		switch {
		case err == nil:
			added = append(added, d)
		case errors.Is(err, errNoSpace):
			l.limited(err)
			unwatched++
		case errors.Is(err, errNoInstance):
			unwatched++
		case errors.Is(err, errMissing):
			missing = append(missing, d)
			unwatched++
		default:
			if !l.refused[d] {
				l.w.log.Warn("drift: cannot watch a directory; scanning it", zap.String("dir", d), zap.Error(err))
				l.refused[d] = true
			}
			unwatched++
		}
	}
	watches := l.in.count()
	if m := l.w.opts.Metrics; m != nil {
		m.DriftWatches.Set(float64(watches))
	}
	l.w.update(func(s *Status) { s.Watches, s.Scanned = watches, unwatched })
	return added, missing
}

// limited logs, once per Run, that watches ran out.
func (l *loop) limited(err error) {
	if l.limitLog {
		return
	}
	l.limitLog = true
	l.w.log.Warn("drift: out of inotify watches; the directories without one are scanned every --drift-scan instead. Raise the limit with sysctl -w fs.inotify.max_user_watches=N (and in /etc/sysctl.d)",
		zap.Error(err), zap.Int("watches", l.in.count()), zap.Duration("scan_every", l.w.opts.ScanEvery))
}

// scan queues the managed paths whose directory has no watch.
func (l *loop) scan() {
	var paths []string
	for _, p := range l.managed {
		if !l.in.watched(path.Dir(p)) {
			paths = append(paths, p)
		}
	}
	l.add(paths...)
}

// verify drops the watches, among dirs, whose path names another
// directory now (a parent moved, and the watch with it: `mv x x.old &&
// mkdir -p x/y` would leave x/y unseen), queues their paths, and has the
// next refresh watch them again.
func (l *loop) verify(dirs []string) {
	for _, d := range l.in.stale(dirs) {
		l.in.remove(d)
		l.rewatch = true
		l.add(l.under(d)...)
	}
}

// watchedUnder lists the watched directories equal to or under p.
func (l *loop) watchedUnder(p string) []string {
	prefix := strings.TrimSuffix(p, "/") + "/"
	var out []string
	for _, d := range l.in.dirs() {
		if d == p || strings.HasPrefix(d, prefix) {
			out = append(out, d)
		}
	}
	return out
}

// under returns the managed paths equal to or under p.
func (l *loop) under(p string) []string {
	prefix := strings.TrimSuffix(p, "/") + "/"
	i := sort.SearchStrings(l.managed, p)
	var out []string
	for ; i < len(l.managed); i++ {
		q := l.managed[i]
		if q != p && !strings.HasPrefix(q, prefix) {
			if q > prefix {
				break
			}
			continue
		}
		out = append(out, q)
	}
	return out
}

// handle turns a read of events into pending paths.
func (l *loop) handle(evs []event) {
	for _, ev := range evs {
		switch {
		case ev.overflow:
			l.w.update(func(s *Status) { s.Overflows++ })
			l.fullOwed = true
			l.fullCheck(time.Now())
		case ev.gone: // the directory itself was deleted or moved
			// A moved directory keeps its watch on the inode, and so do
			// the directories below it: drop them, and watch the paths
			// again once they are back.
			l.in.remove(ev.dir)
			l.rewatch = true
			l.add(l.under(ev.dir)...)
			l.verify(l.watchedUnder(ev.dir))
		default:
			p := path.Join(ev.dir, ev.name)
			if l.set[p] {
				l.add(p)
			} else if ev.isDir {
				l.add(l.under(p)...) // a managed directory (or a parent) removed or replaced
				l.verify(l.watchedUnder(p))
			} else if u := l.under(p); len(u) > 0 {
				l.add(u...) // a file where a managed directory was
			}
		}
	}
}

// add queues paths for the next batch.
func (l *loop) add(paths ...string) {
	if len(paths) == 0 {
		return
	}
	now := time.Now()
	if len(l.pending) == 0 {
		l.first = now
	}
	l.last = now
	for _, p := range paths {
		l.pending[p] = true
	}
}

// fullCheck checks every managed path once, if one is owed and none ran
// within FullEvery (else the refresh tick after it does).
func (l *loop) fullCheck(now time.Time) {
	if !l.fullOwed || !l.lastFull.IsZero() && now.Sub(l.lastFull) < l.w.opts.FullEvery {
		return
	}
	l.fullOwed, l.lastFull = false, now
	l.w.log.Warn("drift: the kernel's inotify queue overflowed; checking every managed path once")
	l.w.update(func(s *Status) { s.FullChecks++ })
	if m := l.w.opts.Metrics; m != nil {
		m.DriftFullChecks.Inc()
	}
	l.add(l.managed...)
}

// due moves the paths whose backoff ended back into the batch, and runs
// a full check owed.
func (l *loop) due(now time.Time) {
	l.fullCheck(now)
	var ready []string
	for p := range l.deferred {
		if h := l.hist[p]; h == nil || !now.Before(h.until) {
			ready = append(ready, p)
			delete(l.deferred, p)
		}
	}
	for p, h := range l.hist { // forget quiet paths: the map stays small
		if !now.Before(h.until) && (len(h.times) == 0 || now.Sub(h.times[len(h.times)-1]) > l.w.opts.Window) {
			delete(l.hist, p)
		}
	}
	l.add(ready...)
}

// flush checks (and in Repair mode restores) the pending paths, except
// those in backoff.
func (l *loop) flush(ctx context.Context, now time.Time) {
	var paths []string
	for p := range l.pending {
		if h := l.hist[p]; h != nil && now.Before(h.until) {
			l.deferred[p] = true
			continue
		}
		paths = append(paths, p)
	}
	clear(l.pending)
	if len(paths) == 0 {
		return
	}
	slices.Sort(paths)
	fix := l.w.opts.Mode == Repair
	rep := l.w.rep.Repair(ctx, paths, fix)
	l.record(rep, rep.Fixed, time.Now()) // the repairer may have held it back
}

// record counts a batch's drift, and puts the paths repaired too often in
// backoff.
func (l *loop) record(rep *applier.RepairReport, fix bool, now time.Time) {
	if len(rep.Drifted) == 0 {
		return
	}
	m := l.w.opts.Metrics
	var last Repaired
	for _, d := range rep.Drifted {
		fixed := fix && rep.Failed[d.Config] == nil
		last = Repaired{Config: d.Config, Path: d.Real, What: d.What, Time: now.UTC(), Fixed: fixed}
		if m != nil {
			if fixed {
				m.DriftRepairs.WithLabelValues(d.Config).Inc()
			} else {
				m.DriftFound.WithLabelValues(d.Config).Inc()
			}
		}
		if !fix {
			l.w.log.Warn("drift found (--drift watch: not repaired)", zap.String("config", d.Config), zap.String("path", d.Real), zap.Strings("differed", d.What))
		}
		l.backoff(d.Real, fixed, now) // a report repeated by every scan backs off too
	}
	l.w.update(func(s *Status) {
		s.Repairs += len(rep.Drifted)
		s.Last = &last
		s.Backoff = l.inBackoff(now)
	})
	if m != nil {
		m.DriftBackoff.Set(float64(len(l.inBackoff(now))))
	}
}

// backoff records a repair (or, unfixed, a report) of p, and delays its
// next one when it had Storm within Window.
func (l *loop) backoff(p string, fixed bool, now time.Time) {
	o := l.w.opts
	h := l.hist[p]
	if h == nil {
		h = &history{}
		l.hist[p] = h
	}
	h.times = append(slices.DeleteFunc(h.times, func(t time.Time) bool { return now.Sub(t) > o.Window }), now)
	if len(h.times) < o.Storm {
		h.delay = 0
		return
	}
	h.delay = min(max(2*h.delay, backoffBase), o.MaxBackoff)
	h.until = now.Add(h.delay)
	verb := "repaired"
	if !fixed {
		verb = "found"
	}
	l.w.log.Warn(fmt.Sprintf("drift %s %d times in %s: something else writes it", verb, len(h.times), o.Window),
		zap.String("path", p), zap.Duration("next_check_in", h.delay))
}

// inBackoff lists the paths in backoff now, sorted.
func (l *loop) inBackoff(now time.Time) []string {
	var out []string
	for p, h := range l.hist {
		if now.Before(h.until) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// Set parses s into m (a flag.Value, for --drift).
func (m *Mode) Set(s string) error {
	v, err := ParseMode(s)
	if err == nil {
		*m = v
	}
	return err
}

// Type names the flag's values in help.
func (m *Mode) Type() string { return "off|watch|repair" }
