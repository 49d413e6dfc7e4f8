package main

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/agent"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
)

// completionTimeout bounds everything a completion asks etcd: the shell
// waits for it, and an unreachable etcd completes nothing rather than hang.
const completionTimeout = 2 * time.Second

// completionLimit bounds the names one completion lists.
const completionLimit = 1000

// lister returns the candidates for the argument being completed, given
// the arguments before it and what was typed of it.
type lister func(ctx context.Context, a *app, args []string, typed string) []string

// completion turns a lister into a cobra completion function. cobra runs
// no pre-run hook for completions, so it reads the CCM_* variables and
// makes the paths absolute itself.
func (a *app) completion(list lister) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, typed string) ([]string, cobra.ShellCompDirective) {
		a.settings, _ = loadSettings()
		_ = a.bindEnv(cmd.Flags())
		a.log = zap.NewNop()
		if dir, err := filepath.Abs(a.configDir); err == nil {
			a.configDir = dir
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		var out []string
		for _, c := range list(ctx, a, args, typed) {
			// Names come from etcd, anyone's bytes: one per line, or none.
			if strings.HasPrefix(c, typed) && !strings.ContainsFunc(c, unicode.IsControl) {
				out = append(out, c)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// argLister completes the positional arguments in order, one lister each.
func argLister(byPosition ...lister) lister {
	return func(ctx context.Context, a *app, args []string, typed string) []string {
		if len(args) >= len(byPosition) {
			return nil
		}
		return byPosition[len(args)](ctx, a, args, typed)
	}
}

// completionCluster connects for a completion; nil when it cannot.
func (a *app) completionCluster() *cluster.Cluster {
	cfg := a.clientConfig()
	cfg.DialTimeout = completionTimeout
	cli, err := cluster.NewClient(cfg)
	if err != nil {
		return nil
	}
	a.closers = append(a.closers, func() { cli.Close() })
	return cluster.New(cli, cluster.Options{Prefix: a.prefix})
}

// objectTypes lists the object types in etcd.
func objectTypes(ctx context.Context, a *app, _ []string, typed string) []string {
	c := a.completionCluster()
	if c == nil {
		return nil
	}
	prefix := c.ObjectsPrefix()
	types := map[string]bool{}
	// Hop from type to type: the first key of each, never every object.
	from := prefix + typed
	for len(types) < completionLimit {
		resp, err := c.Client().Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
		if err != nil || len(resp.Kvs) == 0 {
			break
		}
		typ, _, ok := strings.Cut(strings.TrimPrefix(string(resp.Kvs[0].Key), prefix), "/")
		if !ok || !strings.HasPrefix(typ, typed) {
			break
		}
		types[typ] = true
		from = clientv3.GetPrefixRangeEnd(prefix + typ + "/")
	}
	return slices.Sorted(maps.Keys(types))
}

// objectIDs lists the IDs of the type in args[0].
func objectIDs(ctx context.Context, a *app, args []string, typed string) []string {
	c := a.completionCluster()
	if c == nil {
		return nil
	}
	prefix := c.ObjectsPrefix() + args[0] + "/"
	resp, err := c.Client().Get(ctx, prefix+typed, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(completionLimit))
	if err != nil {
		return nil
	}
	var ids []string
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return ids
}

// configNames lists the configurations of the configuration directory.
func configNames(_ context.Context, a *app, _ []string, _ string) []string {
	set, err := configs.Load(a.configDir)
	if err == nil {
		return slices.Sorted(maps.Keys(set.Configs))
	}
	// A broken directory still has names: its files.
	paths, _ := filepath.Glob(filepath.Join(a.configDir, "*.yaml"))
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".yaml"))
	}
	return names
}

// actionNames lists the actions of the configuration directory's handlers
// and the built-in ones every agent answers.
func actionNames(_ context.Context, a *app, _ []string, _ string) []string {
	names := []string{agent.ActionPlan, agent.ActionConverge}
	if hs, err := actions.LoadHandlers(a.configDir); err == nil {
		names = append(names, hs.Names()...)
	}
	slices.Sort(names)
	return names
}

// nodeNames lists the nodes the cluster knows: alive or with a status.
func nodeNames(ctx context.Context, a *app, _ []string, _ string) []string {
	c := a.completionCluster()
	if c == nil {
		return nil
	}
	v, err := c.View(ctx)
	if err != nil {
		return nil
	}
	var names []string
	for _, n := range v.Nodes {
		names = append(names, n.Name)
	}
	return names
}

// labelPairs lists the k=v labels operators gave nodes (ccm node label).
func labelPairs(ctx context.Context, a *app, _ []string, _ string) []string {
	c := a.completionCluster()
	if c == nil {
		return nil
	}
	all, err := c.Labels(ctx)
	if err != nil {
		return nil
	}
	pairs := map[string]bool{}
	for _, labels := range all {
		for k, v := range labels {
			pairs[k+"="+v] = true
		}
	}
	return slices.Sorted(maps.Keys(pairs))
}

// registerFlagCompletion completes flag name of cmd with list; a missing
// flag is a programming error.
func (a *app) registerFlagCompletion(cmd *cobra.Command, name string, list lister) {
	if err := cmd.RegisterFlagCompletionFunc(name, a.completion(list)); err != nil {
		panic(err)
	}
}
