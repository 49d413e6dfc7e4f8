package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/follow"
	"github.com/ccm-dev/ccm/internal/releases"
)

// releaseState is what the agent knows of <prefix>/release, the release
// every node must run. It is fed by a follower of that one key.
type releaseState struct {
	key string

	mu  sync.Mutex
	id  string // the promoted release; "" when none is
	err error  // the pointer's value is not one ccm wrote
	rev int64  // the revision of the pointer's last change (0: never set)
	// read is closed once the pointer was first read: until then the
	// agent cannot tell which configuration to run.
	read     chan struct{}
	readOnce sync.Once
	// changed is called, outside mu, for every change of the pointer.
	changed func(id string, rev int64)
}

func newReleaseState(key string, changed func(string, int64)) *releaseState {
	return &releaseState{key: key, read: make(chan struct{}), changed: changed}
}

// pointer returns the promoted release ("" when none), the revision of
// its promotion, and why the pointer cannot be read.
func (r *releaseState) pointer() (string, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.id, r.rev, r.err
}

// wait returns once the pointer has been read, or with ctx's error.
func (r *releaseState) wait(ctx context.Context) error {
	select {
	case <-r.read:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s not read yet: %w", r.key, ctx.Err())
	}
}

// set records the pointer's value (nil: absent) at rev.
func (r *releaseState) set(raw []byte, rev int64) {
	id, err := r.decode(raw)
	r.mu.Lock()
	changed := id != r.id || (err == nil) != (r.err == nil)
	r.id, r.err = id, err
	if rev > 0 {
		r.rev = rev
	}
	r.mu.Unlock()
	r.readOnce.Do(func() { close(r.read) })
	if changed {
		r.changed(id, rev)
	}
}

// Reset records the pointer as listed at rev.
func (r *releaseState) Reset(_ context.Context, kvs []*mvccpb.KeyValue, _ int64, _ string) error {
	if len(kvs) == 0 {
		r.set(nil, 0)
		return nil
	}
	r.set(kvs[0].Value, kvs[0].ModRevision)
	return nil
}

// Apply records each put and delete of the pointer.
func (r *releaseState) Apply(_ context.Context, resp clientv3.WatchResponse) error {
	for _, ev := range resp.Events {
		if ev.Type == clientv3.EventTypePut {
			r.set(ev.Kv.Value, ev.Kv.ModRevision)
		} else {
			r.set(nil, ev.Kv.ModRevision)
		}
	}
	return nil
}

// decode returns the release a pointer's value names ("" for none, raw
// nil); its error is errBadPointer.
func (r *releaseState) decode(raw []byte) (string, error) {
	if raw == nil {
		return "", nil
	}
	ptr, err := releases.DecodePointer(r.key, raw)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errBadPointer, err)
	}
	return ptr.ID, nil
}

// atGate returns the release the pointer names as the lock's gate read
// it, at the run's revision ("" for none), and records it unless the
// watch already holds a later one; its error is errBadPointer. A
// promotion after that revision is a later change, which the pointer's
// watch brings to a run of its own.
func (r *releaseState) atGate(gate cluster.Gate) (string, error) {
	r.mu.Lock()
	later := r.rev > gate.Revision
	r.mu.Unlock()
	if !later {
		r.set(gate.ReleasePointer, gate.ReleaseRevision)
	}
	return r.decode(gate.ReleasePointer)
}

// watchRelease follows <prefix>/release.
func (a *Agent) watchRelease(ctx context.Context) {
	follow.New(a.opts.Client, a.release, follow.Options{Name: a.release.key, Key: a.release.key, Logger: a.log}).Run(ctx)
}

// releaseChanged is a move of the pointer: a change of everything, which
// the node is behind on until it converged it.
func (a *Agent) releaseChanged(id string, rev int64) {
	if id == a.selection.Load().release {
		return
	}
	what := "release pointer removed: back to --config-dir"
	if id != "" {
		what = "release " + releases.Short(id) + " promoted"
	}
	a.log.Info(what, zap.Int64("revision", rev))
	if rev > 0 {
		a.presence.changedAt(rev)
	}
	a.deb.AddAll(what)
}

// releaseTarget is the newest change a run converges, for the canary: an
// object event, or the release's promotion.
func (a *Agent) releaseTarget() int64 {
	_, rev, _ := a.release.pointer()
	return max(a.mirror.Applied(), rev)
}

// errNoConfiguration stops runs while the node has nothing to converge.
var errNoConfiguration = errors.New("nothing to converge: --config-dir has no configuration and no release is promoted")

// target is what a run converges: a selection, the release the pointer
// named when it was prepared, and why that release could not be loaded
// (the run then fails with it, keeping sel, the loaded one).
type target struct {
	sel     *selection
	release string
	broken  error
}

// errBadPointer is a release pointer whose value ccm did not write: the
// node's run fails with it.
var errBadPointer = errors.New("the release pointer is not one ccm wrote")

// errReleaseMoved ends a run prepared for a release the pointer no longer
// names.
var errReleaseMoved = errors.New("the release pointer moved")

// next returns what the next run converges: the loaded selection, or the
// promoted release (or --config-dir, once no release is promoted) loaded
// now. Its error is one of etcd's, or errNoConfiguration: no run.
func (a *Agent) next(ctx context.Context) (*target, error) {
	cur := a.selection.Load()
	id, _, err := a.release.pointer()
	switch {
	case err != nil:
		return &target{sel: cur, release: id, broken: err}, nil
	case id == cur.release && !cur.empty:
		if id != "" { // back to the loaded release (a rollback): nothing failed to load
			a.reloaded(nil)
			a.recheckStored(ctx, cur)
		}
		return &target{sel: cur, release: id}, nil
	case a.pending != nil && a.pending.release == id:
		return &target{sel: a.pending, release: id}, nil
	}
	var sel *selection
	if id == "" {
		if sel, err = load(a.opts.ConfigDir, a.opts.ActionKeys); err == nil && sel.empty {
			err = errNoConfiguration
		}
	} else {
		sel, err = a.loadRelease(ctx, id)
	}
	switch {
	case err == nil:
		a.pending = sel
		return &target{sel: sel, release: id}, nil
	case releases.Transient(err):
		return nil, err
	case releases.Damaged(err):
		// The copy in etcd is not whole, and no verified copy is staged:
		// not this node's failure, and nothing to run until a push
		// repairs it.
		a.reloaded(err)
		return nil, err
	case errors.Is(err, errNoConfiguration):
		// Nothing failed: a fresh node waits for its first release.
		a.reloaded(nil)
		return nil, err
	}
	a.reloaded(err)
	a.log.Error("load of the promoted configuration failed", zap.String("release", releases.Short(id)), zap.Error(err))
	return &target{sel: cur, release: id, broken: err}, nil
}

// loadRelease stages release id in --release-dir (verified against
// --release-keys, a staged copy checked against its manifest) and loads
// it. A copy in etcd that is broken while a verified one is staged is
// reported, and the staged one loaded.
func (a *Agent) loadRelease(ctx context.Context, id string) (*selection, error) {
	st, err := a.releaseDir.Stage(ctx, releases.NewStore(a.opts.Client, a.opts.Prefix), id, a.verifyRelease())
	if err != nil {
		return nil, err
	}
	if st.Discarded != nil {
		a.log.Warn("staged release did not match its manifest: staged again from etcd", zap.String("release", releases.Short(id)), zap.Error(st.Discarded))
	}
	sel, err := load(st.Dir, a.opts.ActionKeys)
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", releases.Short(id), err)
	}
	sel.release = id
	sel.stored = st.Stored
	return sel, nil
}

// verifyRelease is the check of a release's signature against
// --release-keys (nil without).
func (a *Agent) verifyRelease() func(*releases.Release) error {
	if a.releaseKeys == nil {
		return nil
	}
	return releases.Verifier(a.releaseKeys.Trusted)
}

// adopt makes sel the loaded selection, under the lock at the start of a
// run that converges it: from then on actions and plans use it too.
func (a *Agent) adopt(sel *selection) {
	a.pending = nil
	prev := a.selection.Swap(sel)
	if prev == sel {
		return
	}
	a.reloaded(nil)
	a.mirror.SetValidator(sel.schemas)
	a.published(sel.release)
	a.storedState(sel)
	a.log.Info("configuration loaded", zap.String("release", releases.Short(sel.release)), zap.Strings("order", sel.set.Order))
	if err := a.releaseDir.Prune(sel.release, prev.release); err != nil {
		a.log.Warn("remove staged releases", zap.Error(err))
	}
}

// recheckStored reads again the stored copy of the loaded release while
// it is known broken: once a push repaired it, the node says so at its
// next run. (Under runMu, as every use of sel.stored.)
func (a *Agent) recheckStored(ctx context.Context, sel *selection) {
	if sel.stored == nil {
		return
	}
	r, err := releases.NewStore(a.opts.Client, a.opts.Prefix).Fetch(ctx, sel.release)
	if releases.Transient(err) {
		return
	}
	if verify := a.verifyRelease(); err == nil && verify != nil {
		err = verify(r)
	}
	if err == nil {
		a.log.Info("the copy in etcd of the release this node runs is whole again", zap.String("release", releases.Short(sel.release)))
	}
	sel.stored = err
	a.storedState(sel)
}

// storedState reports whether the copy in etcd of the release sel is
// loaded from can be used (sel.stored nil), in the log, the presence and
// the metrics. A broken copy is not this node's failure: the node runs
// its verified staged copy.
func (a *Agent) storedState(sel *selection) {
	if sel.stored != nil && sel.stored.Error() != a.presence.value().ReleaseStoredError {
		a.log.Warn("the copy in etcd of the release this node runs is broken: running its verified staged copy; ccm release push of the same directory repairs it",
			zap.String("release", releases.Short(sel.release)), zap.Error(sel.stored))
	}
	a.presence.releaseStored(sel.stored)
	broken := 0.0
	if sel.stored != nil {
		broken = 1
	}
	a.metrics.ReleaseStoredBroken.Set(broken)
}

// reloaded records how the last load of a configuration ended (nil: it
// succeeded), in the presence and the metrics.
func (a *Agent) reloaded(err error) {
	failed := 0.0
	if err != nil {
		failed = 1
	}
	a.metrics.ReloadFailed.Set(failed) // before the presence wakes its readers
	a.presence.reloaded(err)
}

// published announces the release the agent has loaded, in the presence
// and the metrics.
func (a *Agent) published(release string) {
	a.presence.setRelease(release)
	a.metrics.Release.Reset()
	a.metrics.Release.WithLabelValues(cmp.Or(releases.Short(release), "dir")).Set(1)
}
