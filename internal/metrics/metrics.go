// Package metrics holds the agent's Prometheus metrics and serves them with
// the health endpoints.
//
// Every metric lives in the Metrics' own registry (no global state), with
// the Go and process collectors, so tests can read values directly.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	// Runs counts converge runs by result: converged, failed, aborted,
	// halted.
	Runs *prometheus.CounterVec
	// Failures counts failed configurations.
	Failures prometheus.Counter
	// ChangedFiles counts files and directories created, updated or
	// removed.
	ChangedFiles prometheus.Counter
	// RunDuration observes converge runs, lock held.
	RunDuration prometheus.Histogram
	// LockWait observes the wait for the cluster lock.
	LockWait prometheus.Histogram
	// DebouncePending is the number of changed types waiting for a run.
	DebouncePending prometheus.Gauge
	// LastSuccess is the Unix time of the last converged run.
	LastSuccess prometheus.Gauge
	// WatchLag is the cluster revision minus the mirror's revision.
	WatchLag prometheus.Gauge
	// Halted is 1 while the failure flag stops this node.
	Halted prometheus.Gauge
	// Quarantined is how many objects this node's last run held back.
	Quarantined prometheus.Gauge
	// ReloadFailed is 1 while the last load of a configuration (a promoted
	// release, or --config-dir on SIGHUP) failed.
	ReloadFailed prometheus.Gauge
	// Release is 1 for the release the agent has loaded ("dir" for its
	// --config-dir), and absent for any other.
	Release *prometheus.GaugeVec
	// ReleaseStoredBroken is 1 while the copy in etcd of the loaded
	// release is broken and the agent runs its verified staged copy.
	ReleaseStoredBroken prometheus.Gauge
	// Ready is 1 while the mirror is synced with etcd.
	Ready prometheus.Gauge
	// Paused is 1 while the rollout is paused.
	Paused prometheus.Gauge
	// Actions counts node actions by action and final state.
	Actions *prometheus.CounterVec
	// ActionDuration observes node actions, from claim to reply.
	ActionDuration *prometheus.HistogramVec
	// ActionsRunning is the number of actions claimed and not finished.
	ActionsRunning prometheus.Gauge
	// DriftRepairs counts managed paths found drifted and restored, by
	// configuration; DriftFound those found and not restored (--drift
	// watch, a halted node, a failed repair).
	DriftRepairs, DriftFound *prometheus.CounterVec
	// DriftWatches is the inotify watches the drift watcher holds.
	DriftWatches prometheus.Gauge
	// DriftBackoff is how many paths are repaired with backoff.
	DriftBackoff prometheus.Gauge
	// DriftFullChecks counts checks of every managed path (after the
	// kernel's event queue overflowed).
	DriftFullChecks prometheus.Counter
}

// New returns the metrics, registered in a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccm_runs_total", Help: "Converge runs by result.",
		}, []string{"result"}),
		Failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ccm_configuration_failures_total", Help: "Configurations that failed to converge.",
		}),
		ChangedFiles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ccm_changed_files_total", Help: "Files and directories created, updated or removed.",
		}),
		RunDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ccm_run_duration_seconds", Help: "Duration of converge runs.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		LockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ccm_lock_wait_seconds", Help: "Time spent waiting for the cluster lock.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		DebouncePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_debounce_pending", Help: "Changed object types waiting for a run.",
		}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_last_success_timestamp_seconds", Help: "Unix time of the last converged run.",
		}),
		WatchLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_watch_revision_lag", Help: "Cluster revision minus the revision the local mirror holds.",
		}),
		Halted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_halted", Help: "1 while the failure flag stops this node.",
		}),
		Quarantined: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_quarantined_objects", Help: "Objects the last run held back: quarantined here or by another node, at their current revision.",
		}),
		ReloadFailed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_reload_failed", Help: "1 while the last load of a configuration (a promoted release, or --config-dir on SIGHUP) failed.",
		}),
		ReleaseStoredBroken: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_release_stored_broken", Help: "1 while the copy in etcd of the loaded release is broken (changed or deleted) and the agent runs its verified staged copy.",
		}),
		Release: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ccm_release_info", Help: "1 for the configuration release the agent has loaded (dir: its --config-dir).",
		}, []string{"release"}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_ready", Help: "1 while the local mirror is synced with etcd.",
		}),
		Paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_paused", Help: "1 while the rollout is paused (ccm pause).",
		}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccm_actions_total", Help: "Node actions by action and final state.",
		}, []string{"action", "state"}),
		ActionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ccm_action_duration_seconds", Help: "Duration of node actions, from claim to reply.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"action"}),
		ActionsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_actions_running", Help: "Node actions claimed and not finished.",
		}),
		DriftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccm_drift_repairs_total", Help: "Managed paths found drifted and restored from the last converged render.",
		}, []string{"configuration"}),
		DriftFound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccm_drift_found_total", Help: "Managed paths found drifted and not restored (--drift watch, halted, or the repair failed).",
		}, []string{"configuration"}),
		DriftWatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_drift_watches", Help: "inotify watches held by the drift watcher (one per directory with a managed path).",
		}),
		DriftBackoff: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ccm_drift_backoff_paths", Help: "Managed paths repaired too often, now repaired with backoff.",
		}),
		DriftFullChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ccm_drift_full_checks_total", Help: "Checks of every managed path, after the kernel's inotify queue overflowed.",
		}),
	}
	m.Registry.MustRegister(m.Runs, m.Failures, m.ChangedFiles, m.RunDuration, m.LockWait,
		m.DebouncePending, m.LastSuccess, m.WatchLag, m.Halted, m.Quarantined, m.ReloadFailed, m.Release, m.ReleaseStoredBroken, m.Ready,
		m.Paused, m.Actions, m.ActionDuration, m.ActionsRunning,
		m.DriftRepairs, m.DriftFound, m.DriftWatches, m.DriftBackoff, m.DriftFullChecks,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics, /healthz (healthy returns nil: the main loop
// makes progress) and /readyz (ready returns nil).
func (m *Metrics) Handler(healthy, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", check("unhealthy", healthy))
	mux.HandleFunc("/readyz", check("not ready", ready))
	return mux
}

// check answers 200 ok, or 503 with what fn says.
func check(what string, fn func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if err := fn(); err != nil {
			http.Error(w, what+": "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}
