package main

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/configs"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newValidateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Load and check the configuration directory offline",
		Long:  "Checks the configurations, the action handlers and the object schemas. Exit codes: 0 ok, 1 errors (all of them, each naming its file).",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			set, err := a.loadConfigs()
			empty := errors.Is(err, configs.ErrNoConfigurations)
			if empty { // a fresh install: valid, and said so
				err = nil
			}
			hs, herr := actions.LoadHandlers(a.configDir)
			sch, serr := a.schemas()
			if err != nil || herr != nil || serr != nil {
				return errors.Join(err, herr, serr)
			}
			if empty {
				fmt.Fprintf(a.stdout, "%s: no configurations yet; the agent and apply refuse to run until there is one\n", a.configDir)
			} else {
				fmt.Fprintf(a.stdout, "%s: %d configurations OK, in order: %s\n", set.Dir, len(set.Order), strings.Join(set.Order, ", "))
			}
			if len(hs.Names()) > 0 {
				printHandlers(a.stdout, hs)
			}
			if types := sch.Types(); len(types) > 0 {
				fmt.Fprintf(a.stdout, "%s: %d schemas OK: %s\n", sch.Dir, len(types), strings.Join(types, ", "))
			}
			return nil
		},
	}
}

func newGraphCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "graph",
		Short: "Print the configuration dependency graph as DOT",
		Long:  "Edges point in run order: from a dependency to the configuration that depends on it.",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			set, err := a.loadConfigs()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "digraph ccm {")
			fmt.Fprintln(a.stdout, "  rankdir=LR;")
			for _, n := range set.Order {
				fmt.Fprintf(a.stdout, "  %q;\n", n)
			}
			for _, n := range set.Order {
				for _, d := range set.Configs[n].DependsOn {
					fmt.Fprintf(a.stdout, "  %q -> %q;\n", d, n)
				}
			}
			fmt.Fprintln(a.stdout, "}")
			return nil
		},
	}
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		// Needs no flags, etcd or logger.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(*cobra.Command, []string) error {
			rev := ""
			if info, ok := debug.ReadBuildInfo(); ok {
				for _, s := range info.Settings {
					if s.Key == "vcs.revision" {
						rev = " " + s.Value
					}
				}
			}
			fmt.Fprintf(a.stdout, "ccm %s%s %s/%s %s\n", version, rev, runtime.GOOS, runtime.GOARCH, runtime.Version())
			return nil
		},
	}
}
