package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/drift"
)

func newAgentCmd(a *app) *cobra.Command {
	opts := agent.Options{Drift: drift.Options{Mode: drift.Repair}}
	var metricsAddr string
	var profiles bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the per-node service: watch etcd and converge on change",
		Long: `Watch the objects in etcd, debounce changes, and converge the configurations
that subscribe to them, one node at a time under the cluster lock.
SIGTERM/SIGINT finish the current configuration, release the lock and exit 0.
SIGHUP reloads the configuration directory and the action handlers (a broken
one is logged, published in ccm status, and the loaded one kept).
Once a release is promoted (ccm release promote), the agent runs it instead
of --config-dir: it fetches, verifies and stages it, and converges it
through the lock like any change. The agent also answers the actions
addressed to its node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runAgent(cmd.Context(), opts, metricsAddr, profiles)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opts.Debounce, "debounce", agent.DefaultDebounce, "quiet period after the last change before a run")
	f.DurationVar(&opts.MaxWait, "max-wait", agent.DefaultMaxWait, "longest delay of a run after the first change")
	f.DurationVar(&opts.LockTTL, "lock-ttl", cluster.DefaultLockTTL, "lease TTL of the node's session (lock and presence)")
	f.DurationVar(&opts.StuckAfter, "stuck-after", agent.DefaultStuckAfter, "fail /healthz and the systemd watchdog once the agent has not been ready (no session or no synced watch) for this long")
	f.DurationVar(&opts.Resync, "resync", agent.DefaultResync, "converge everything this often, repairing local drift")
	f.StringVar(&opts.ActionKeys, "action-keys", "", "run only action requests signed by a key in this OpenSSH authorized_keys `FILE` (ed25519)")
	f.StringVar(&opts.ReleaseDir, "release-dir", "/var/cache/ccm/releases", "stage promoted releases in this `DIR` (root-owned and readable: handlers that run as other users read their scripts from it)")
	f.StringVar(&opts.ReleaseKeys, "release-keys", "", "load only configuration releases signed by a key in this OpenSSH authorized_keys `FILE` (ed25519)")
	f.DurationVar(&opts.Retention, "retention", api.DefaultRetention, "how long etcd keeps this node's replies to actions")
	f.StringVar(&opts.Cgroup, "cgroup", "auto", "put each action handler's run in a cgroup v2 of its own under `DIR`, so that nothing it started outlives it: auto (the agent's own, delegated by systemd), a directory, or off")
	f.Var(&opts.Drift.Mode, "drift", "what to do when a managed file changes on disk: off, watch (report it) or repair (restore it from the last converged render within seconds)")
	f.DurationVar(&opts.Drift.ScanEvery, "drift-scan", drift.DefaultScanEvery, "scan this often the directories the drift watcher has no inotify watch for (fs.inotify.max_user_watches reached)")
	f.IntVar(&opts.Drift.MaxWatches, "drift-max-watches", 0, "use at most this many inotify watches for drift, scanning the rest (0: up to the kernel's fs.inotify.max_user_watches)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve /metrics, /healthz and /readyz on this `ADDR` (e.g. 127.0.0.1:9310)")
	f.BoolVar(&profiles, "pprof", false, "also serve Go's profiles under /debug/pprof/ on --metrics-addr")
	return cmd
}

func (a *app) runAgent(ctx context.Context, opts agent.Options, metricsAddr string, profiles bool) error {
	a.longRunning = true
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	labels, err := a.nodeLabels()
	if err != nil {
		return err
	}
	opts.Client, opts.Prefix, opts.Node, opts.Labels = c.Client(), a.prefix, a.node, labels
	opts.ConfigDir, opts.Root, opts.StateDir, opts.Logger = a.configDir, a.root, a.stateDir, a.log
	ag, err := agent.New(opts)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if metricsAddr != "" {
		if err := serveMetrics(ctx, &wg, metricsAddr, ag, profiles, a.log); err != nil {
			return err
		}
	}
	wg.Add(2)
	go func() { defer wg.Done(); reloadOnHUP(ctx, ag) }()
	go func() { defer wg.Done(); notifySystemd(ctx, ag, a.log) }()
	a.log.Info("agent started", zap.String("config_dir", a.configDir), zap.String("root", a.root),
		zap.Strings("endpoints", a.endpoints), zap.Duration("debounce", opts.Debounce))
	err = ag.Run(ctx)
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	a.log.Info("agent stopped")
	return err
}

// serveMetrics listens on addr and serves until ctx ends.
func serveMetrics(ctx context.Context, wg *sync.WaitGroup, addr string, ag *agent.Agent, withPprof bool, log *zap.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	handler := ag.Metrics().Handler(ag.Healthy, ag.Ready)
	if withPprof {
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		handler = mux
	}
	serveHTTP(ctx, wg, l, handler, "metrics server", log)
	log.Info("serving metrics", zap.String("addr", l.Addr().String()))
	return nil
}

// serveHTTP serves handler on l until ctx ends, then shuts the server down
// within 2 s; wg counts its goroutines.
func serveHTTP(ctx context.Context, wg *sync.WaitGroup, l net.Listener, handler http.Handler, what string, log *zap.Logger) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what, zap.Error(err))
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
}

// reloadOnHUP reloads the configuration directory on SIGHUP.
func reloadOnHUP(ctx context.Context, ag *agent.Agent) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			_ = ag.Reload() // logged; the loaded configuration stays
		}
	}
}

// notifySystemd tells systemd (Type=notify) that the service is up, keeps
// its status line current and pings the watchdog. Readiness to systemd
// means the agent runs; whether etcd answers shows in STATUS= and /readyz,
// so that an unreachable etcd does not make systemd kill the agent.
func notifySystemd(ctx context.Context, ag *agent.Agent, log *zap.Logger) {
	notifyEvery(ctx, ag, statusPoll, log)
}

// statusPoll is how often STATUS= is compared with /readyz's answer; it
// is sent only when it changes.
const statusPoll = time.Second

// readiness is what /healthz and /readyz answer from.
type readiness interface {
	Healthy() error
	Ready() error
}

// notifyEvery is notifySystemd, reading the agent every poll: STATUS=
// follows /readyz within a poll, not at the next watchdog ping (30 s
// under the shipped unit: `systemctl status` said "not ready" long after
// /readyz said ok).
func notifyEvery(ctx context.Context, ag readiness, poll time.Duration, log *zap.Logger) {
	sent, err := daemon.SdNotify(false, daemon.SdNotifyReady)
	if err != nil || !sent {
		return // not under systemd
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		interval = 30 * time.Second
	} else {
		interval /= 2
	}
	t := time.NewTicker(min(poll, interval))
	defer t.Stop()
	var status string
	var pinged time.Time
	for {
		// The watchdog is fed only while the main loop makes progress: a
		// wedged run gets the agent restarted.
		healthy, now := ag.Healthy(), time.Now()
		next := "STATUS=converging; watching etcd"
		if healthy != nil {
			next = "STATUS=unhealthy: " + healthy.Error()
		} else if err := ag.Ready(); err != nil {
			next = "STATUS=not ready: " + err.Error()
		}
		var msg []string
		if next != status {
			msg, status = append(msg, next), next
		}
		if healthy == nil && now.Sub(pinged) >= interval-poll/2 {
			msg, pinged = append(msg, daemon.SdNotifyWatchdog), now
		}
		if len(msg) > 0 {
			if _, err := daemon.SdNotify(false, strings.Join(msg, "\n")); err != nil {
				log.Debug("sd_notify", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
