package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/render"
)

// errActionFailed is returned when a target did not succeed.
var errActionFailed = errors.New("the action did not succeed on every node")

func newActionCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "action",
		Short: "Call actions on nodes and read their replies",
	}
	cmd.AddCommand(newActionRunCmd(a), newActionGetCmd(a), newActionListCmd(a), newActionValidateCmd(a))
	return cmd
}

// callFlags are the flags of ccm action run.
type callFlags struct {
	nodes, labels, params []string
	secrets               []string
	signKey, replyKey     string
	all, asJSON, noWait   bool
	paramsFile, deadline  string
	batch, maxFailures    int
	pickup, retention     time.Duration
}

func newActionRunCmd(a *app) *cobra.Command {
	var f callFlags
	cmd := &cobra.Command{
		Use:   "run NAME",
		Short: "Call an action on nodes and wait for every reply",
		Long: `Call the action NAME on the nodes named with --node, those whose agent
published every --label k=v, or --all alive nodes, and wait for every reply.
A named node whose agent is not alive is reported, and its request runs when
it returns (before --deadline, if given). A node that does not pick its
request up within --pickup-timeout has it withdrawn.
Exit codes: 0 every node succeeded; 1 any failed, timed out, was rejected or
gave no reply. With --no-wait: 0, and the call's id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			call, err := f.call(a, args[0])
			if err != nil {
				return err
			}
			c, err := a.client(cmd.Context(), f.signKey)
			if err != nil {
				return err
			}
			if f.noWait {
				return a.send(cmd.Context(), c, call, f.replyKey)
			}
			if f.replyKey != "" {
				return errors.New("--reply-key goes with --no-wait: a call that waits opens its sealed replies itself")
			}
			return a.callAndPrint(cmd.Context(), c, call, f.asJSON)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.nodes, "node", nil, "call this node (repeatable)")
	fl.StringArrayVar(&f.labels, "label", nil, "call the alive nodes with this label k=v (repeatable: all must match)")
	fl.BoolVar(&f.all, "all", false, "call every alive node")
	fl.StringArrayVar(&f.params, "param", nil, "parameter k=v (repeatable; the value may hold any character)")
	fl.StringArrayVar(&f.secrets, "secret", nil, "secret parameter k=v, or k=@FILE to read the value from a file: sealed to each node's key, never stored in clear")
	fl.StringVar(&f.signKey, "sign-key", "", "sign the requests with this OpenSSH ed25519 private key `FILE` (for agents with --action-keys)")
	fl.StringVar(&f.paramsFile, "params-file", "", "parameters from a JSON object of strings in `FILE.json` (--param wins)")
	fl.IntVar(&f.batch, "batch", 0, "call at most N nodes at a time (0: all at once)")
	fl.IntVar(&f.maxFailures, "max-failures", 0, "with --batch: stop sending after K failures (0: never)")
	fl.DurationVar(&f.pickup, "pickup-timeout", client.DefaultPickupTimeout, "withdraw the request of a node that does not pick it up within this")
	fl.StringVar(&f.deadline, "deadline", "", "the latest a node may pick the request up: a duration from now (10m) or an RFC 3339 time")
	fl.DurationVar(&f.retention, "retention", client.DefaultRetention, "how long etcd keeps the requests and replies")
	fl.BoolVar(&f.asJSON, "json", false, "print one reply per line as JSON")
	fl.BoolVar(&f.noWait, "no-wait", false, "write the requests, print the id and return")
	fl.StringVar(&f.replyKey, "reply-key", "", "with --no-wait: write the call's reply key to `FILE` (0600), for ccm action get --reply-key to open sealed replies")
	for _, name := range []string{"node", "label"} {
		_ = fl.SetAnnotation(name, noEnv, []string{"true"})
	}
	cmd.ValidArgsFunction = a.completion(argLister(actionNames))
	a.registerFlagCompletion(cmd, "node", nodeNames)
	a.registerFlagCompletion(cmd, "label", labelPairs)
	return cmd
}

// call builds the client call from the flags.
func (f *callFlags) call(a *app, action string) (client.Call, error) {
	call := client.Call{
		Action: action,
		To:     client.Targets{Nodes: f.nodes, All: f.all, Labels: map[string]string{}},
		By:     a.by(),
		FanOut: client.FanOut{Batch: f.batch, MaxFailures: f.maxFailures},
		Timing: client.Timing{PickupTimeout: f.pickup, Retention: f.retention},
		Params: map[string]string{},
	}
	if len(f.nodes)+len(f.labels) == 0 && !f.all {
		return call, errors.New("no target: give --node, --label or --all")
	}
	if err := pairs("--label", f.labels, call.To.Labels); err != nil {
		return call, err
	}
	if f.paramsFile != "" {
		raw, err := os.ReadFile(f.paramsFile)
		if err != nil {
			return call, fmt.Errorf("--params-file: %w", err)
		}
		if err := json.Unmarshal(raw, &call.Params); err != nil {
			return call, fmt.Errorf("--params-file %s: want a JSON object of strings: %w", f.paramsFile, err)
		}
	}
	if err := pairs("--param", f.params, call.Params); err != nil {
		return call, err
	}
	for _, p := range f.secrets {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return call, fmt.Errorf("--secret %s: want key=value or key=@FILE", k)
		}
		if file, ok := strings.CutPrefix(v, "@"); ok {
			raw, err := os.ReadFile(file)
			if err != nil {
				return call, fmt.Errorf("--secret %s: %w", k, err)
			}
			v = strings.TrimSuffix(string(raw), "\n")
		}
		if call.Secrets == nil {
			call.Secrets = map[string]string{}
		}
		call.Secrets[k] = v
	}
	if f.deadline != "" {
		if d, err := time.ParseDuration(f.deadline); err == nil {
			call.Timing.Deadline = time.Now().Add(d)
		} else if t, err := time.Parse(time.RFC3339, f.deadline); err == nil {
			call.Timing.Deadline = t
		} else {
			return call, fmt.Errorf("--deadline %q: want a duration (10m) or an RFC 3339 time", f.deadline)
		}
	}
	return call, nil
}

// caller names who calls, for the request's by.
func caller() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

func (a *app) send(ctx context.Context, c *client.Client, call client.Call, replyKey string) error {
	ctx, cancel := a.requestContext(ctx)
	defer cancel()
	s, err := c.Send(ctx, call)
	if err != nil {
		return err
	}
	if replyKey != "" {
		if err := os.WriteFile(replyKey, []byte(s.ReplyKey.Private()+"\n"), 0o600); err != nil {
			return fmt.Errorf("--reply-key: %w (the call %s was sent)", err, s.ID)
		}
	}
	for _, n := range s.NotAlive {
		fmt.Fprintf(a.stderr, "ccm: %s: %s\n", render.Escape(n), client.ErrNotAlive)
	}
	for _, n := range s.NoKey {
		fmt.Fprintf(a.stderr, "ccm: %s: not sent: %s\n", render.Escape(n), client.ErrNoKey)
	}
	fmt.Fprintln(a.stdout, s.ID)
	return nil
}

// callAndPrint runs a call, shows progress on a terminal, and prints the
// replies as a table (or one JSON line each, as they arrive).
func (a *app) callAndPrint(ctx context.Context, c *client.Client, call client.Call, asJSON bool) error {
	var rows []row
	failed := false
	progress := isTerminal(a.stderr)
	for reply, err := range c.Run(ctx, call) {
		var ne *client.NodeError
		if err != nil && !errors.As(err, &ne) {
			return err
		}
		r := newRow(reply, ne)
		failed = failed || r.state != api.StateSucceeded
		if asJSON {
			if err := writeJSON(a.stdout, r.json(), false); err != nil {
				return err
			}
			continue
		}
		rows = append(rows, r)
		if progress {
			fmt.Fprintf(a.stderr, "\r%d replied, last: %s %s", len(rows), render.Escape(r.node), r.state)
		}
	}
	if progress && len(rows) > 0 {
		fmt.Fprint(a.stderr, "\r\x1b[K")
	}
	if !asJSON {
		printRows(a.stdout, rows)
	}
	if failed {
		return errActionFailed
	}
	return nil
}

// row is one node's outcome as the table shows it.
type row struct {
	node, state, exit, took, output string
	reply                           api.Reply
	err                             error
}

func newRow(reply api.Reply, ne *client.NodeError) row {
	r := row{node: reply.Node, state: reply.State, exit: "-", took: "-", reply: reply}
	if ne != nil {
		r.state, r.err, r.output = nodeErrorState(ne.Err), ne.Err, ne.Err.Error()
		return r
	}
	if reply.ExitCode != nil {
		r.exit = fmt.Sprint(*reply.ExitCode)
	}
	if !reply.Started.IsZero() && !reply.Finished.IsZero() {
		r.took = reply.Finished.Sub(reply.Started).Round(time.Millisecond).String()
	}
	r.output = outputText(reply.Output)
	if reply.Sealed != "" && len(reply.Output) == 0 && reply.Error == "" {
		r.output = "[sealed: ccm action get --reply-key opens it]"
	}
	if reply.Error != "" && (r.output == "" || reply.State != api.StateSucceeded) {
		r.output = strings.TrimSpace(strings.Join([]string{r.output, reply.Error}, " "))
	}
	return r
}

// nodeErrorState is the STATE column of a node that gave no final reply.
func nodeErrorState(err error) string {
	switch {
	case errors.Is(err, client.ErrNotAlive):
		return "not_alive"
	case errors.Is(err, client.ErrNoPickup):
		return "no_reply"
	case errors.Is(err, client.ErrNodeLost):
		return "lost"
	case errors.Is(err, client.ErrNotSent), errors.Is(err, client.ErrNoKey):
		return "not_sent"
	}
	return "error"
}

// json is the row as ccm action run --json prints it: the reply, or the
// node's error.
func (r row) json() any {
	if r.err != nil {
		return map[string]string{"id": r.reply.ID, "node": r.node, "state": r.state, "error": r.err.Error()}
	}
	reply := r.reply
	reply.Output = plainJSON(reply.Output)
	return reply
}

// outputText is a reply's output for a terminal: a JSON string as its
// text, anything else as compact JSON.
func outputText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(plainJSON(raw))
}

// printRows prints the table; each cell is one line, escaped for the
// terminal. A lone reply's whole output follows the table.
func printRows(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tEXIT\tDURATION\tOUTPUT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", render.Escape(r.node), r.state, r.exit, r.took, render.Escape(firstLine(r.output)))
	}
	tw.Flush()
	if len(rows) == 1 && strings.Contains(strings.TrimSpace(rows[0].output), "\n") {
		fmt.Fprintln(w)
		for _, line := range strings.Split(strings.TrimRight(rows[0].output, "\n"), "\n") {
			fmt.Fprintln(w, render.Escape(line))
		}
	}
}

func newActionGetCmd(a *app) *cobra.Command {
	var asJSON bool
	var replyKey string
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a call's requests and every reply so far",
		Long:  "Exit codes: 0, or 1 when no request has this id (unknown, or expired).",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			recs, err := a.records(cmd, func(ctx context.Context, c *client.Client) ([]client.Record, error) { return c.Get(ctx, args[0]) })
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				return fmt.Errorf("no request with id %s (unknown, or past its retention)", render.Escape(args[0]))
			}
			if replyKey != "" {
				if err := openReplies(recs, replyKey); err != nil {
					return err
				}
			}
			if asJSON {
				return printJSONLines(a.stdout, recs)
			}
			req := recs[0].Request
			fmt.Fprintf(a.stdout, "Call %s: action %s by %s at %s\n", render.Escape(req.ID), render.Escape(req.Action), render.Escape(recs[0].By()), req.Created.Format(time.RFC3339))
			var rows []row
			for _, rec := range recs {
				reply := api.Reply{ID: req.ID, Node: rec.Node, State: api.StatePending}
				if rec.Reply != nil {
					reply = *rec.Reply
				}
				rows = append(rows, newRow(reply, nil))
			}
			printRows(a.stdout, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one request and its reply per line as JSON")
	cmd.Flags().StringVar(&replyKey, "reply-key", "", "open sealed replies with the key ccm action run --no-wait --reply-key wrote to `FILE`")
	return cmd
}

// openReplies opens the sealed replies of recs with the key in file.
func openReplies(recs []client.Record, file string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("--reply-key: %w", err)
	}
	key, err := api.ParseKey(string(raw))
	if err != nil {
		return fmt.Errorf("--reply-key %s: %w", file, err)
	}
	var errs []error
	for _, r := range recs {
		if r.Reply != nil {
			errs = append(errs, r.Reply.Open(key))
		}
	}
	return errors.Join(errs...)
}

func newActionListCmd(a *app) *cobra.Command {
	var node string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List recent requests and their states, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			recs, err := a.records(cmd, func(ctx context.Context, c *client.Client) ([]client.Record, error) { return c.List(ctx, node, limit) })
			if err != nil {
				return err
			}
			if asJSON {
				return printJSONLines(a.stdout, recs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tACTION\tNODE\tSTATE\tBY\tCREATED")
			for _, r := range recs {
				state := api.StatePending
				if r.Reply != nil {
					state = r.Reply.State
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", render.Escape(r.Request.ID), render.Escape(r.Request.Action), render.Escape(r.Node),
					render.Escape(state), render.Escape(r.By()), r.Request.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only the requests to this node")
	_ = cmd.Flags().SetAnnotation("node", noEnv, []string{"true"})
	cmd.Flags().IntVar(&limit, "limit", 50, "show at most this many (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one request and its reply per line as JSON")
	return cmd
}

func newActionValidateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the handler files of the configuration directory offline",
		Long:  "Exit codes: 0 ok, 1 errors (every one, naming its file).",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			hs, err := actions.LoadHandlers(a.configDir)
			if err != nil {
				return err
			}
			printHandlers(a.stdout, hs)
			return nil
		},
	}
}

// records reads requests with a request timeout.
func (a *app) records(cmd *cobra.Command, fn func(context.Context, *client.Client) ([]client.Record, error)) ([]client.Record, error) {
	c, err := a.client(cmd.Context(), "")
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.requestContext(cmd.Context())
	defer cancel()
	return fn(ctx, c)
}

func printJSONLines[T any](w io.Writer, items []T) error {
	for _, it := range items {
		if err := writeJSON(w, it, false); err != nil {
			return err
		}
	}
	return nil
}

// client connects to etcd and returns the action client, signing with
// the key in signKey when given.
func (a *app) client(ctx context.Context, signKey string) (*client.Client, error) {
	opts := client.Options{Prefix: a.prefix, RequestTimeout: a.timeout}
	if signKey != "" {
		signer, err := api.LoadSigner(signKey)
		if err != nil {
			return nil, err
		}
		opts.Signer = signer
	}
	c, err := a.cluster(ctx)
	if err != nil {
		return nil, err
	}
	return client.New(c.Client(), opts), nil
}

// printHandlers says which actions a handler directory declares.
func printHandlers(w io.Writer, hs *actions.Handlers) {
	fmt.Fprintf(w, "%s: %d actions OK: %s\n", hs.Dir, len(hs.Names()), strings.Join(hs.Names(), ", "))
}
