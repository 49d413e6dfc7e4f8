package main

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/dashboard"
)

func newDashboardCmd(a *app) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve a live, read-only web page of the cluster",
		Long: `Serve a web page of the cluster: every node with its state, last converged
revision and whether it is behind; the failure flag or the pause; the lock
holders; the rollout strategy; the recent actions. It follows the cluster
with one watch, however many people look, and updates every open page at
once (server-sent events). It reads etcd with the credentials of the global
flags and writes nothing. Bind it to loopback or put it behind a proxy that
authenticates: it shows node names, errors and action callers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDashboard(cmd.Context(), listen)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9320", "serve the page on this `ADDR`")
	return cmd
}

func (a *app) runDashboard(ctx context.Context, listen string) error {
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	srv := dashboard.New(c, client.New(c.Client(), client.Options{Prefix: a.prefix, RequestTimeout: a.timeout}), a.log)
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	serveHTTP(ctx, &wg, l, srv.Handler(), "dashboard server", a.log)
	a.log.Info("dashboard", zap.String("url", "http://"+l.Addr().String()+"/"))
	return srv.Run(ctx)
}
