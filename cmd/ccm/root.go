package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/ratelog"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/rollout"
)

// Exit codes, mapped from errors in one place (exitCode).
const (
	exitOK      = 0
	exitError   = 1
	exitChanges = 2 // plan: something would change
	exitHalted  = 3 // the failure flag is set, or the rollout paused
)

var (
	// errChanges is returned by plan when something would change.
	errChanges = errors.New("changes pending")
	// errHalted is returned when the failure flag stops a command.
	errHalted = errors.New("halted by the failure flag; run ccm resume once it is fixed")
)

// exitCode maps a command's error to the process exit code.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errChanges):
		return exitChanges
	case errors.Is(err, errHalted), errors.Is(err, rollout.ErrHalted), errors.Is(err, rollout.ErrPaused):
		return exitHalted
	default:
		return exitError
	}
}

// run executes the CLI and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	cmd := newRootCmd(app)
	cmd.SetArgs(args)
	cmd.SetIn(stdin)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := app.unreachable(cmd.ExecuteContext(ctx))
	app.close()
	if err != nil && !errors.Is(err, errChanges) {
		printError(stderr, err)
	}
	return exitCode(err)
}

// printError prints err one error per line, each escaped for the terminal.
func printError(w io.Writer, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			fmt.Fprintf(w, "ccm: %s\n", render.Escape(line))
		}
	}
}

// app holds the global flags and what they build, shared by the commands.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	endpoints           []string
	prefix              string
	configDir           string
	stateDir            string
	root                string
	node                string
	labels              []string
	cacert, cert, key   string
	user                string
	logFormat, logLevel string
	embeddedEtcd        string
	timeout             time.Duration

	// settings are the CCM_* variables (environment over the defaults
	// file); explicitNode is set when --node or CCM_NODE named the node.
	settings     settings
	explicitNode bool
	// longRunning is set by the agent and the dashboard, whose etcd
	// client logs its retries.
	longRunning bool

	log *zap.Logger
	// etcdStarted: the embedded etcd runs (a command that connects twice
	// starts it once).
	etcdStarted bool
	closers     []func()
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "ccm",
		Short:         "Converge node configuration files from objects in etcd",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if a.settings, err = loadSettings(); err != nil {
				return err
			}
			if err := a.bindEnv(cmd.Flags()); err != nil {
				return err
			}
			return a.setup()
		},
	}
	hostname, _ := os.Hostname()
	f := root.PersistentFlags()
	f.StringSliceVar(&a.endpoints, "endpoints", []string{"127.0.0.1:2379"}, "etcd endpoints")
	f.StringVar(&a.prefix, "prefix", api.DefaultPrefix, "etcd key prefix of the cluster")
	f.StringVar(&a.configDir, "config-dir", "/etc/ccm", "configuration directory")
	f.StringVar(&a.stateDir, "state-dir", "/var/lib/ccm", "state directory (manifests of written files)")
	f.StringVar(&a.root, "root", "/", "directory all rendered paths live under")
	f.StringVar(&a.node, "node", hostname, "this node's name")
	f.StringSliceVar(&a.labels, "label", nil, "node label k=v (repeatable), matched by when:")
	f.StringVar(&a.cacert, "cacert", "", "etcd CA certificate (PEM)")
	f.StringVar(&a.cert, "cert", "", "etcd client certificate (PEM)")
	f.StringVar(&a.key, "key", "", "etcd client key (PEM)")
	f.StringVar(&a.user, "user", "", "etcd user; the password is read from CCM_PASSWORD")
	f.StringVar(&a.logFormat, "log-format", "", "console or json (default: console on a terminal, else json)")
	f.StringVar(&a.logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&a.timeout, "timeout", 10*time.Second, "give up on etcd requests of one-shot commands after this long")
	f.StringVar(&a.embeddedEtcd, "embedded-etcd", "", "run a single-member etcd in this process with data in `DIR`, serving --endpoints")

	root.AddCommand(
		newAgentCmd(a), newPlanCmd(a), newApplyCmd(a), newStatusCmd(a), newResumeCmd(a), newUnpauseCmd(a), newPauseCmd(a), newRolloutCmd(a), newLockCmd(a),
		newQuarantineCmd(a), newReleaseCmd(a), newValidateCmd(a), newGraphCmd(a), newObjectCmd(a), newRBACCmd(a), newActionCmd(a), newNodeCmd(a), newHistoryCmd(a), newDashboardCmd(a), newVersionCmd(a),
	)
	return root
}

// noEnv marks a flag that is never read from the environment: the
// targets of a call, which share names with the node's own settings
// (--node, --label) but mean something else.
const noEnv = "ccm-no-env"

// bindEnv sets every flag not given on the command line from CCM_<FLAG>,
// in the environment or else in the defaults file. It records whether the
// node was named (explicitNode) rather than left to the hostname.
func (a *app) bindEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Annotations[noEnv] != nil {
			return
		}
		if f.Changed {
			a.explicitNode = a.explicitNode || f.Name == "node"
			return
		}
		env := "CCM_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := a.settings.lookup(env); ok {
			if fv := a.settings.file[env]; f.Name == "release-keys" && v == "" && fv != "" {
				// Verification is never turned off by an empty variable
				// that hides the node's setting: say so, and do nothing.
				errs = append(errs, fmt.Errorf("%s is empty in the environment, and %s sets it to %s: an empty value does not turn release verification off; unset it, or give --release-keys",
					env, a.settings.path, fv))
				return
			}
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
			a.explicitNode = a.explicitNode || f.Name == "node"
		}
	})
	return errors.Join(errs...)
}

func (a *app) setup() error {
	log, err := newLogger(a.logFormat, a.logLevel, a.stderr)
	if err != nil {
		return err
	}
	// A node's name is a key component (nodes/<node>/...) and a role
	// name: the object ID grammar. (Commands that need one refuse an
	// empty name themselves: see checkNode.)
	if a.node != "" {
		if err := a.checkNode(); err != nil {
			return err
		}
	}
	a.log = log
	if a.root, err = filepath.Abs(a.root); err != nil {
		return err
	}
	// Commands run in the configuration directory.
	if a.configDir, err = filepath.Abs(a.configDir); err != nil {
		return err
	}
	return nil
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	if a.log != nil {
		_ = a.log.Sync()
	}
}

func newLogger(format, level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if format == "" {
		format = "json"
		if isTerminal(w) {
			format = "console"
		}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", format)
	}
	// Repeated warnings (retries while etcd does not answer) are written
	// once per cause per interval, with a count.
	return zap.New(ratelog.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl), ratelog.DefaultInterval)), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// nodeLabels parses --label k=v flags.
func (a *app) nodeLabels() (map[string]string, error) {
	labels := map[string]string{}
	if err := pairs("--label", a.labels, labels); err != nil {
		return nil, err
	}
	return labels, nil
}

// pairs adds each key=value of args to into: the one parser of k=v
// arguments. Every malformed one is reported, one per line, naming what
// (a flag, or an argument) it was given as.
func pairs(what string, args []string, into map[string]string) error {
	var errs []error
	for _, arg := range args {
		k, v, ok := strings.Cut(arg, "=")
		if !ok || k == "" {
			errs = append(errs, fmt.Errorf("%s %q: want key=value", what, arg))
			continue
		}
		into[k] = v
	}
	return errors.Join(errs...)
}

func (a *app) loadConfigs() (*configs.Set, error) {
	return configs.Load(a.configDir)
}

func (a *app) applier() (*applier.Applier, error) {
	labels, err := a.nodeLabels()
	if err != nil {
		return nil, err
	}
	return applier.New(applier.Options{
		Root:      a.root,
		StateDir:  a.stateDir,
		ConfigDir: a.configDir,
		Node:      render.Node{Name: a.node, Labels: labels},
		Logger:    a.log,
	}), nil
}

// cluster connects to etcd (starting the embedded one if asked) and returns
// the cluster's shared state.
func (a *app) cluster(ctx context.Context) (*cluster.Cluster, error) {
	if a.embeddedEtcd != "" && !a.etcdStarted {
		closeEtcd, err := startEmbedded(ctx, a.embeddedEtcd, clientURL(a.endpoints[0]), a.log)
		if err != nil {
			return nil, err
		}
		a.etcdStarted = true
		a.closers = append(a.closers, closeEtcd)
	}
	client, err := cluster.NewClient(a.clientConfig())
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, func() { client.Close() })
	return cluster.New(client, cluster.Options{Prefix: a.prefix, Node: a.node}), nil
}

// clientConfig is how to reach etcd, from the global flags.
func (a *app) clientConfig() cluster.ClientConfig {
	log := a.log
	if !a.longRunning {
		// A one-shot command says in one line why it gave up (see
		// unreachable); the client's own retries would say it again, as
		// JSON, once per attempt.
		log = log.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
	}
	return cluster.ClientConfig{
		Endpoints: a.endpoints,
		CACert:    a.cacert, Cert: a.cert, Key: a.key,
		User: a.user, Password: a.password(),
		Logger: log,
	}
}

// checkNode refuses a node name outside the object ID grammar.
func (a *app) checkNode() error { return api.CheckName("--node", a.node) }

// password is the etcd user's password, from CCM_PASSWORD (never a flag,
// which every user of the machine could read).
func (a *app) password() string {
	p, _ := a.settings.lookup("CCM_PASSWORD")
	return p
}

// withCluster runs fn with the cluster and a request timeout.
func (a *app) withCluster(cmd *cobra.Command, fn func(context.Context, *cluster.Cluster) error) error {
	c, err := a.cluster(cmd.Context())
	if err != nil {
		return err
	}
	ctx, cancel := a.requestContext(cmd.Context())
	defer cancel()
	return fn(ctx, c)
}

// requestContext bounds a one-shot command's etcd requests by --timeout.
func (a *app) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

// unreachable names the endpoints when etcd did not answer in time, and
// the cause when a plain connection shows one (refused, DNS, TLS).
func (a *app) unreachable(err error) error {
	if !timedOut(err) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	if cause := cluster.Diagnose(ctx, a.clientConfig()); cause != nil {
		return fmt.Errorf("etcd unreachable within --timeout %s:\n%w", a.timeout, cause)
	}
	return &notAnswered{endpoints: strings.Join(a.endpoints, ","), timeout: a.timeout, err: err}
}

// notAnswered is a request etcd did not answer in time.
type notAnswered struct {
	endpoints string
	timeout   time.Duration
	err       error
}

// Error says so, with the request's own words, without the gRPC frame
// ("rpc error: code = Unknown desc = ") that etcd puts around a deadline.
// A request refused for want of a leader failed before --timeout (the
// client tries other members for a second: cluster.requireLeader), and
// says that instead.
func (e *notAnswered) Error() string {
	what := "did not answer within --timeout " + e.timeout.String()
	if errors.Is(e.err, rpctypes.ErrNoLeader) {
		what = "has no member with a leader"
	}
	return fmt.Sprintf("etcd at %s %s (no quorum?): %s", e.endpoints, what,
		strings.ReplaceAll(e.err.Error(), "rpc error: code = Unknown desc = ", ""))
}

func (e *notAnswered) Unwrap() error { return e.err }

// timedOut reports whether err is a request that ran out of time, as
// Go's context says it, as etcd says it gave up (no leader, request timed
// out), or as its gRPC status does (code DeadlineExceeded, or Unknown with
// the context's words when etcd had no quorum).
func timedOut(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	// etcd gave up itself: a member without a leader, or one that lost it.
	for _, e := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged} {
		if errors.Is(err, e) {
			return true
		}
	}
	st, ok := status.FromError(err) // it looks through wrapping
	return ok && (st.Code() == codes.DeadlineExceeded || (st.Code() == codes.Unknown && strings.Contains(st.Message(), context.DeadlineExceeded.Error())))
}

// prepare loads the configuration directory and selects the configurations
// to run on this node: all of them, or those named.
func (a *app) prepare(names []string) (*configs.Set, *applier.Applier, []string, error) {
	set, err := a.loadConfigs()
	if err != nil {
		return nil, nil, nil, err
	}
	ap, err := a.applier()
	if err != nil {
		return nil, nil, nil, err
	}
	if len(names) == 0 {
		return set, ap, ap.SelectAll(set), nil
	}
	selected, err := ap.Select(set, names)
	if err != nil {
		return nil, nil, nil, err
	}
	return set, ap, selected, nil
}

func clientURL(endpoint string) string {
	if strings.Contains(endpoint, "://") {
		return endpoint
	}
	return "http://" + endpoint
}
