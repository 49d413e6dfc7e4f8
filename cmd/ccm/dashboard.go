package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/dashboard"
)

func newDashboardCmd(a *app) *cobra.Command {
	var listen string
	var opts dashboardOptions
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve a live, read-only web page of the cluster",
		Long: `Serve a web page of the cluster: every node with its state, last converged
revision and whether it is behind; the failure flag or the pause; the lock
holders; the rollout strategy; the recent actions. It follows the cluster
with one watch, however many people look, and updates every open page at
once (server-sent events). It reads etcd with the credentials of the global
flags and writes nothing (the viewer role of ccm rbac print --viewer is
enough). It answers only requests addressed to a loopback name, the host of
--listen or an --allow-host name, so that a page elsewhere cannot rebind its
DNS name to it. --token-file requires a bearer token (browsers log in once
and keep a cookie); --tls-cert/--tls-key serve HTTPS, and --client-ca
requires a client certificate that CA signed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDashboard(cmd.Context(), listen, opts)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9320", "serve the page on this `ADDR`")
	cmd.Flags().StringSliceVar(&opts.hosts, "allow-host", nil, "also answer requests addressed to this host `NAME` (repeatable)")
	cmd.Flags().StringVar(&opts.tokenFile, "token-file", "", "require the bearer token in `FILE` (its first line)")
	cmd.Flags().StringVar(&opts.tlsCert, "tls-cert", "", "serve HTTPS with this certificate `FILE` (PEM)")
	cmd.Flags().StringVar(&opts.tlsKey, "tls-key", "", "the key `FILE` of --tls-cert")
	cmd.Flags().StringVar(&opts.clientCA, "client-ca", "", "with --tls-cert: require client certificates signed by this CA `FILE`")
	cmd.MarkFlagsRequiredTogether("tls-cert", "tls-key")
	return cmd
}

// dashboardOptions are the dashboard's access flags.
type dashboardOptions struct {
	hosts                                []string
	tokenFile, tlsCert, tlsKey, clientCA string
}

func (a *app) runDashboard(ctx context.Context, listen string, opts dashboardOptions) error {
	access := dashboard.Access{Hosts: opts.hosts}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			access.Hosts = append(access.Hosts, host)
		}
	}
	if opts.tokenFile != "" {
		token, err := dashboard.ReadToken(opts.tokenFile)
		if err != nil {
			return err
		}
		access.Token = token
	}
	if opts.clientCA != "" && opts.tlsCert == "" {
		return errors.New("--client-ca needs --tls-cert and --tls-key")
	}
	a.longRunning = true
	c, err := a.cluster(ctx)
	if err != nil {
		return err
	}
	srv := dashboard.New(c, client.New(c.Client(), client.Options{Prefix: a.prefix, RequestTimeout: a.timeout}), a.log)
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	scheme := "http"
	if opts.tlsCert != "" {
		cfg, err := dashboard.TLSConfig(opts.tlsCert, opts.tlsKey, opts.clientCA)
		if err != nil {
			l.Close()
			return err
		}
		l, scheme = tls.NewListener(l, cfg), "https"
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	serveHTTP(ctx, &wg, l, srv.Handler(access), "dashboard server", a.log)
	a.log.Info("dashboard", zap.String("url", scheme+"://"+l.Addr().String()+"/"))
	return srv.Run(ctx)
}
