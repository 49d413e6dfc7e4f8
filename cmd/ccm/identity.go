package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/render"
)

// identity is the etcd identity the command authenticates as: --user,
// which etcd prefers when both are given, else the CN of the --cert
// client certificate, which etcd takes as the user; "" with neither.
func (a *app) identity() string {
	if a.user != "" {
		return a.user
	}
	if a.cert == "" {
		return ""
	}
	raw, err := os.ReadFile(a.cert)
	if err != nil {
		return ""
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	return cert.Subject.CommonName
}

// by names who makes a change in the records that say so (a pause, the
// release pointer, an unsigned call): the etcd identity, else, with no
// etcd auth, the OS user and host.
func (a *app) by() string {
	if id := a.identity(); id != "" {
		return id
	}
	return caller()
}

// record appends an operator's change to the history. The change is made
// already: a history that cannot be written is a warning, not a failure.
func (a *app) record(cmd *cobra.Command, action, detail string) {
	h := api.History{Identity: a.identity(), Host: caller(), Action: action, Detail: detail}
	err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error { return c.Record(ctx, h) })
	if err != nil {
		fmt.Fprintf(a.stderr, "ccm: warning: done, but not recorded in the history: %s\n", render.Escape(err.Error()))
	}
}

func newHistoryCmd(a *app) *cobra.Command {
	var asJSON bool
	var limit int64
	cmd := &cobra.Command{
		Use:   "history [--limit N] [--json]",
		Short: "Show who changed what: promote, rollback, pause, resume, lock break, quarantine clear, node label and retire",
		Long: fmt.Sprintf(`Print the history of operators' changes, oldest first: each with its time, the
etcd identity that made it (the etcd user, or the client certificate's CN),
the OS user and host the command ran as, and what it changed. The records
live under <prefix>/history/; each write deletes those older than %s.`, cluster.HistoryRetention),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			hs, err := read(a, cmd, func(c *cluster.Cluster, ctx context.Context) ([]api.History, error) { return c.History(ctx, limit) })
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, hs, true)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tBY\tHOST\tACTION\tDETAIL")
			for _, h := range hs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Time.Format(time.RFC3339), render.Escape(h.Identity), render.Escape(h.Host),
					render.Escape(h.Action), render.Escape(firstLine(h.Detail)))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().Int64Var(&limit, "limit", 50, "the newest N records (0: all)")
	return cmd
}
