package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/actions"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/objects"
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
ccm release promote moves <prefix>/release to one: every agent fetches,
verifies and stages it, and converges it through the lock like any change
(one node at a time, or in batches behind a canary). Until a release is
promoted, agents read their --config-dir.`,
	}
	cmd.AddCommand(newReleasePushCmd(a), newReleaseListCmd(a), newReleaseShowCmd(a), newReleaseDiffCmd(a),
		newReleasePromoteCmd(a), newReleaseRollbackCmd(a), newReleaseCurrentCmd(a), newReleaseVerifyCmd(a))
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
			var pushed releases.Pushed
			err = a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				pushed, err = releases.NewStore(c.Client(), a.prefix).Push(ctx, r)
				return err
			})
			if err != nil {
				return err
			}
			size := 0
			for _, f := range r.Files {
				size += f.Size
			}
			switch {
			case pushed.Repaired != nil:
				fmt.Fprintf(a.stderr, "release %s was stored and broken (%s): rewrote it\n", r.Short(), render.Escape(firstLine(pushed.Repaired.Error())))
			case !pushed.Fresh:
				fmt.Fprintf(a.stderr, "release %s is already stored whole (the same content); nothing written\n", r.Short())
			default:
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

func newReleaseVerifyCmd(a *app) *cobra.Command {
	var keysFile string
	cmd := &cobra.Command{
		Use:   "verify ID [--release-keys FILE]",
		Short: "Check that the copy in etcd of release ID is whole, canonical and signed by a release key",
		Long: `Fetch release ID (6 or more digits) as an agent does: its manifest must be
canonical, every chunk the manifest names present and of its size, nothing
else stored under it, every file's digest and the id must hold, and with
--release-keys (CCM_RELEASE_KEYS) its signature must be a release key's.
A node that runs a release whose stored copy breaks keeps running its
verified staged copy; ccm release push of the same directory repairs it.
Exit codes: 0 whole, 1 not.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := a.fetch(cmd, args[0])
			if err != nil {
				return err
			}
			r, signer := rs[0], "not checked: no --release-keys"
			if keysFile != "" {
				keys, err := actions.LoadReleaseKeys(keysFile)
				if err != nil {
					return fmt.Errorf("--release-keys: %w", err)
				}
				if signer, err = r.Verify(keys.Trusted); err != nil {
					return fmt.Errorf("%w\nthe copy in etcd is broken: ccm release push of the same directory with --sign-key restores its signature", err)
				}
			}
			size := 0
			for _, f := range r.Files {
				size += f.Size
			}
			fmt.Fprintf(a.stdout, "release %s is whole: %d files, %d bytes; signature: %s\n", r.ID, len(r.Files), size, render.Escape(signer))
			return nil
		},
	}
	releaseKeysFlag(cmd, &keysFile)
	return cmd
}

func newReleasePromoteCmd(a *app) *cobra.Command {
	var force bool
	var reason, keysFile string
	cmd := &cobra.Command{
		Use:   "promote ID [--force] [--message TEXT] [--release-keys FILE]",
		Short: "Make every agent run release ID, through the lock and the rollout strategy",
		Long: `Move <prefix>/release to the stored release ID (6 or more digits). Every object
is checked against the release's schemas first: if any breaks them, nothing is
promoted and each is named (--force promotes anyway; those objects are then
quarantined by the first node that runs them). With --release-keys
(CCM_RELEASE_KEYS, as the agents') a release that is not signed by a release
key is never promoted, --force or not: the nodes would refuse it. The pointer
moves only if no object was written since the check and nobody promoted
meanwhile.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			verify, err := a.releaseVerifier(keysFile)
			if err != nil {
				return err
			}
			return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				s := releases.NewStore(c.Client(), a.prefix)
				id, err := s.Resolve(ctx, args[0])
				if err != nil {
					return err
				}
				if verify != nil {
					// The nodes would refuse it: never promote what they
					// cannot load (--force or not).
					r, err := s.Fetch(ctx, id)
					if err == nil {
						err = verify(r)
					}
					if err != nil {
						return fmt.Errorf("release %s not promoted: %w", releases.Short(id), err)
					}
				}
				cur, rev, err := s.Current(ctx)
				if err != nil {
					return err
				}
				if cur != nil && cur.ID == id {
					fmt.Fprintf(a.stderr, "release %s is already promoted; nothing written\n", releases.Short(id))
					return nil
				}
				p := releases.Promotion{ID: id, By: a.by(), Reason: reason}
				if !force {
					if p.ObjectsAt, err = a.checkObjectsUnder(ctx, c, s, id, verify); err != nil {
						return err
					}
				}
				next, err := s.Promote(ctx, cur, rev, p)
				if err != nil {
					return err
				}
				printPromotion(a, cur, next)
				a.record(cmd, "release promote", fmt.Sprintf("release %s: %s", next.ID, reason))
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "promote even if existing objects break the release's schemas")
	cmd.Flags().StringVar(&reason, "message", "", "why it is promoted")
	releaseKeysFlag(cmd, &keysFile)
	return cmd
}

// printPromotion says what a move of the pointer did.
func printPromotion(a *app, prev, next *api.ReleasePointer) {
	was := "--config-dir"
	if prev != nil {
		was = releases.Short(prev.ID)
	}
	fmt.Fprintf(a.stdout, "promoted release %s (was %s); agents converge it under the rollout strategy: ccm status shows each node's release\n",
		releases.Short(next.ID), was)
}

// checkObjectsUnder checks every object in etcd against the schemas of
// release id, and returns the revision it read them at; the error names
// every object that breaks them, one per line. Objects that are not JSON
// objects at all are left to the quarantine, as under any release.
func (a *app) checkObjectsUnder(ctx context.Context, c *cluster.Cluster, s *releases.Store, id string, verify func(*releases.Release) error) (int64, error) {
	dir, cleanup, err := s.Open(ctx, id, verify)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	sch, err := schemas.Load(dir)
	if err != nil {
		return 0, err
	}
	snap, err := objects.Load(ctx, c.Client(), a.prefix, nil)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, typ := range sortedTypes(snap) {
		for _, o := range snap.Types[typ] {
			if err := sch.Validate(typ, o.Data); err != nil {
				errs = append(errs, fmt.Errorf("object %s: %w", c.ObjectKey(typ, o.ID), err))
			}
		}
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("release %s not promoted: %d objects break its schemas (change them first, or --force):\n%w",
			releases.Short(id), len(errs), errors.Join(errs...))
	}
	return snap.Revision, nil
}

func newReleaseRollbackCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback",
		Short: "Promote the release promoted before the current one",
		Long: `Move <prefix>/release back to the release it named before, and drop that one
from the history: a second rollback goes one release further back. Objects
are not checked against the older release's schemas: a rollback is the way
out, and an object it refuses is quarantined, not a halt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
				s := releases.NewStore(c.Client(), a.prefix)
				cur, _, err := s.Current(ctx)
				if err != nil {
					return err
				}
				next, err := s.Rollback(ctx, a.by())
				if err != nil {
					return err
				}
				printPromotion(a, cur, next)
				a.record(cmd, "release rollback", "release "+next.ID)
				return nil
			})
		},
	}
}

func newReleaseCurrentCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "current [--json]",
		Short: "Show the promoted release, who promoted it, and the history rollback walks back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cur *api.ReleasePointer
			err := a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) (err error) {
				cur, _, err = releases.NewStore(c.Client(), a.prefix).Current(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, cur, true)
			}
			if cur == nil {
				fmt.Fprintln(a.stdout, "no release promoted: agents read their --config-dir")
				return nil
			}
			fmt.Fprintf(a.stdout, "release %s\npromoted by %s at %s\n", cur.ID, render.Escape(cur.By), cur.Time.Format(time.RFC3339))
			if cur.Reason != "" {
				fmt.Fprintf(a.stdout, "reason: %s\n", render.Escape(cur.Reason))
			}
			for i, id := range cur.History {
				fmt.Fprintf(a.stdout, "before-%d: %s\n", i+1, releases.Short(id))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// releaseKeysFlag registers --release-keys on cmd. Like every flag it is
// read from CCM_RELEASE_KEYS when not given: the setting the agent reads,
// in /etc/default/ccm on a node, so that a command verifies a release as
// the node's agent would.
func releaseKeysFlag(cmd *cobra.Command, file *string) {
	cmd.Flags().StringVar(file, "release-keys", "", "load a release only if signed by a key in this OpenSSH authorized_keys `FILE`, as the agent's --release-keys (CCM_RELEASE_KEYS)")
}

// releaseVerifier returns the check of a release's signature against
// the release keys in file. Without a file it warns, as the agent does,
// and returns nil: etcd's RBAC alone then decides what runs.
func (a *app) releaseVerifier(file string) (func(*releases.Release) error, error) {
	if file == "" && a.settings.unreadable {
		// Verification must not be off only because this user cannot
		// read the node's settings.
		return nil, fmt.Errorf("%s cannot be read by this user, and it may name the node's release keys (CCM_RELEASE_KEYS): run as root, or give --release-keys", a.settings.path)
	}
	if file == "" {
		a.log.Warn(releases.NoKeysWarning)
		return nil, nil
	}
	return a.loadVerifier(file)
}

// loadVerifier is releaseVerifier without the warning (nil without a
// file): for commands that read a release's schemas, not its code.
func (a *app) loadVerifier(file string) (func(*releases.Release) error, error) {
	if file == "" {
		return nil, nil
	}
	keys, err := actions.LoadReleaseKeys(file)
	if err != nil {
		return nil, fmt.Errorf("--release-keys: %w", err)
	}
	return releases.Verifier(keys.Trusted), nil
}

// promotedRelease stages the promoted release, when there is one, and
// points --config-dir at it: once a release is promoted, plan and apply
// --once read what the agents run, verified as the agents do with the
// release keys in keysFile (releaseVerifier). It returns the release id ("" with none) and
// the promotion's revision.
func (a *app) promotedRelease(ctx context.Context, c *cluster.Cluster, keysFile string) (string, int64, func(), error) {
	rctx, cancel := a.requestContext(ctx)
	defer cancel()
	s := releases.NewStore(c.Client(), a.prefix)
	cur, rev, err := s.Current(rctx)
	if err != nil || cur == nil {
		return "", 0, func() {}, err
	}
	verify, err := a.releaseVerifier(keysFile)
	if err != nil {
		return "", 0, nil, err
	}
	dir, cleanup, err := s.Open(rctx, cur.ID, verify)
	if err != nil {
		return "", 0, nil, err
	}
	a.log.Info("a release is promoted: reading it, not --config-dir", zap.String("release", cur.ID))
	a.configDir = dir
	return cur.ID, rev, cleanup, nil
}
