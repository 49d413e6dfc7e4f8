package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/schemas"
)

func newReleaseCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Store configuration directories in etcd as immutable, content-addressed releases",
		Long: `A release is a configuration directory (configurations, templates, schemas,
action handlers, check helpers) validated as ccm validate does and stored
under <prefix>/releases/<id>, where the id is the digest of its content.
Agents of this version still read --config-dir: a release is not yet
promoted to them.`,
	}
	cmd.AddCommand(newReleasePushCmd(a), newReleaseListCmd(a), newReleaseShowCmd(a), newReleaseDiffCmd(a))
	return cmd
}

// validateDir checks a configuration directory as ccm validate does, and
// refuses one without configurations: a release of nothing would remove
// every file configurations wrote.
func validateDir(dir string) error {
	_, err := configs.Load(dir)
	_, herr := actions.LoadHandlers(dir)
	_, serr := schemas.Load(dir)
	return errors.Join(err, herr, serr)
}

func newReleasePushCmd(a *app) *cobra.Command {
	var signKey, message string
	cmd := &cobra.Command{
		Use:   "push DIR [--sign-key KEY] [--message TEXT]",
		Short: "Validate DIR and store it as a release; print its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validateDir(args[0]); err != nil {
				return err
			}
			r, err := releases.Pack(args[0])
			if err != nil {
				return err
			}
			r.Time, r.Message, r.Author = time.Now().UTC(), message, caller()
			if signKey != "" {
				signer, err := api.LoadSigner(signKey)
				if err != nil {
					return err
				}
				r.Author = ""
				if err := r.Sign(signer, keyComment(signKey, signer.PublicKey())); err != nil {
					return err
				}
			}
			var fresh bool
			err = a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				fresh, err = releases.NewStore(c.Client(), a.prefix).Push(ctx, r)
				return err
			})
			if err != nil {
				return err
			}
			size := 0
			for _, f := range r.Files {
				size += f.Size
			}
			if !fresh {
				fmt.Fprintf(a.stderr, "release %s is already stored (the same content); nothing written\n", r.Short())
			} else {
				fmt.Fprintf(a.stderr, "stored release %s: %d files, %d bytes, by %s\n", r.Short(), len(r.Files), size, render.Escape(r.Author))
			}
			fmt.Fprintln(a.stdout, r.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&signKey, "sign-key", "", "sign the release with this OpenSSH ed25519 private key `FILE`; its comment is the author")
	cmd.Flags().StringVar(&message, "message", "", "what the release changes")
	return cmd
}

// keyComment is the comment of the public key beside a private key file
// (KEY.pub), or the key's fingerprint.
func keyComment(file string, pub ssh.PublicKey) string {
	if raw, err := os.ReadFile(file + ".pub"); err == nil {
		if _, comment, _, _, err := ssh.ParseAuthorizedKey(raw); err == nil && comment != "" {
			return comment
		}
	}
	return ssh.FingerprintSHA256(pub)
}

func newReleaseListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the stored releases, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var all []*releases.Release
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				all, err = releases.NewStore(c.Client(), a.prefix).List(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, all, true)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tFILES\tSIGNED\tAUTHOR\tMESSAGE")
			for _, r := range all {
				signed := "no"
				if r.Signature != "" {
					signed = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Short(), r.Time.Format(time.RFC3339), len(r.Files), signed,
					render.Escape(r.Author), render.Escape(firstLine(r.Message)))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// fetch reads and checks releases named by at least 6 digits of their id.
func (a *app) fetch(cmd *cobra.Command, ids ...string) ([]*releases.Release, error) {
	var out []*releases.Release
	err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
		s := releases.NewStore(c.Client(), a.prefix)
		for _, short := range ids {
			id, err := s.Resolve(ctx, short)
			if err != nil {
				return err
			}
			r, err := s.Fetch(ctx, id)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

func newReleaseShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a release: who pushed it, when, why, and its files with their digests",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := a.fetch(cmd, args[0])
			if err != nil {
				return err
			}
			r := rs[0]
			signed := "unsigned"
			if r.Signature != "" {
				signed = "signed"
			}
			fmt.Fprintf(a.stdout, "release %s (%s)\nauthor: %s\ntime: %s\nmessage: %s\n\n", r.ID, signed, render.Escape(r.Author),
				r.Time.Format(time.RFC3339), render.Escape(r.Message))
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MODE\tSIZE\tSHA256\tPATH")
			for _, f := range r.Files {
				fmt.Fprintf(tw, "%04o\t%d\t%s\t%s\n", uint32(f.Mode), f.Size, f.SHA256[:16], render.Escape(f.Path))
			}
			return tw.Flush()
		},
	}
}

func newReleaseDiffCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "diff ID ID",
		Short: "Print the unified diff of two releases' files; exit 2 when they differ",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := a.fetch(cmd, args[0], args[1])
			if err != nil {
				return err
			}
			d := releases.Diff(rs[0], rs[1])
			fmt.Fprint(a.stdout, d)
			if d != "" {
				return errChanges
			}
			return nil
		},
	}
}
