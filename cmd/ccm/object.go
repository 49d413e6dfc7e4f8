package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/client"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/objects"
	"github.com/ccm-dev/ccm/internal/releases"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/schemas"
)

func newObjectCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "object",
		Short: "Manage the objects in etcd",
	}
	cmd.AddCommand(newObjectPutCmd(a), newObjectGetCmd(a), newObjectDeleteCmd(a), newObjectListCmd(a), newObjectImportCmd(a), newObjectExportCmd(a))
	return cmd
}

// objectKey validates a type and ID and returns their key.
func (a *app) objectKey(typ, id string) (string, error) {
	if err := api.CheckName("type", typ); err != nil {
		return "", err
	}
	if err := api.CheckName("id", id); err != nil {
		return "", err
	}
	return objects.Key(a.prefix, typ, id), nil
}

// withKV runs fn with an etcd client and a request timeout.
func (a *app) withKV(cmd *cobra.Command, fn func(context.Context, clientv3.KV) error) error {
	return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
		return fn(ctx, c.Client())
	})
}

// keyCmd is an object command on one TYPE ID.
func (a *app) keyCmd(use, short string, fn func(ctx context.Context, kv clientv3.KV, key string) error) *cobra.Command {
	return &cobra.Command{
		Use:               use + " TYPE ID",
		Short:             short,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completion(argLister(objectTypes, objectIDs)),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := a.objectKey(args[0], args[1])
			if err != nil {
				return err
			}
			return a.withKV(cmd, func(ctx context.Context, kv clientv3.KV) error {
				return fn(ctx, kv, key)
			})
		},
	}
}

func newObjectPutCmd(a *app) *cobra.Command {
	var file, keysFile string
	cmd := &cobra.Command{
		Use:   "put TYPE ID [-f FILE]",
		Short: "Create or replace an object from a JSON file or stdin",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := a.objectKey(args[0], args[1])
			if err != nil {
				return err
			}
			var raw []byte
			if file == "" || file == "-" {
				raw, err = io.ReadAll(a.stdin)
			} else {
				raw, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			data, err := objects.Decode(raw)
			if err != nil {
				return fmt.Errorf("object %s: %w", key, err)
			}
			return a.putObjects(cmd, []client.Object{{Type: args[0], ID: args[1], Data: data}}, keysFile)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "JSON file (default: stdin)")
	releaseKeysFlag(cmd, &keysFile)
	return cmd
}

func newObjectGetCmd(a *app) *cobra.Command {
	return a.keyCmd("get", "Print an object's JSON", func(ctx context.Context, kv clientv3.KV, key string) error {
		resp, err := kv.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("object %s: not found", key)
		}
		fmt.Fprintln(a.stdout, string(plainJSON(resp.Kvs[0].Value)))
		return a.noteQuarantine(ctx, kv, key, resp.Kvs[0].ModRevision)
	})
}

// noteQuarantine says on stderr (stdout stays the object's JSON) which
// nodes hold the object back, and whether at its revision.
func (a *app) noteQuarantine(ctx context.Context, kv clientv3.KV, key string, rev int64) error {
	k := api.NewKeys(a.prefix)
	resp, err := kv.Get(ctx, k.QuarantinePrefix(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read %s: %w", k.QuarantinePrefix(), err)
	}
	for _, kv := range resp.Kvs {
		node, typ, id, ok := k.QuarantineOf(string(kv.Key))
		if !ok || k.ObjectKey(typ, id) != key {
			continue
		}
		var q api.Quarantine
		_ = json.Unmarshal(kv.Value, &q)
		state := "QUARANTINED at this revision"
		if !q.Holds(rev) {
			state = fmt.Sprintf("quarantine lifted (it was at revision %d)", q.Revision)
		}
		fmt.Fprintf(a.stderr, "# %s: found by node %s in configuration %s: %s\n", state, render.Escape(node), render.Escape(q.Configuration), render.Escape(firstLine(q.Error)))
	}
	return nil
}

func newObjectDeleteCmd(a *app) *cobra.Command {
	return a.keyCmd("delete", "Delete an object", func(ctx context.Context, kv clientv3.KV, key string) error {
		resp, err := kv.Delete(ctx, key)
		if err != nil {
			return err
		}
		if resp.Deleted == 0 {
			return fmt.Errorf("object %s: not found", key)
		}
		return nil
	})
}

func newObjectListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:               "list [TYPE]",
		Short:             "List objects as TYPE/ID, sorted",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completion(argLister(objectTypes)),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := objects.Prefix(a.prefix)
			if len(args) == 1 {
				if err := api.CheckName("type", args[0]); err != nil {
					return err
				}
				prefix += args[0] + "/"
			}
			return a.withKV(cmd, func(ctx context.Context, kv clientv3.KV) error {
				resp, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
				if err != nil {
					return err
				}
				for _, kv := range resp.Kvs {
					// Keys are anyone's bytes: escaped as plan escapes content.
					fmt.Fprintln(a.stdout, render.Escape(strings.TrimPrefix(string(kv.Key), objects.Prefix(a.prefix))))
				}
				return nil
			})
		},
	}
}

func newObjectImportCmd(a *app) *cobra.Command {
	var keysFile string
	cmd := &cobra.Command{
		Use:   "import FILE.json",
		Short: `Put every object of a file shaped {"<type>": {"<id>": {...}}}`,
		Long: `The whole file is checked first, against the schemas of the promoted release
(or of the configuration directory while none is) too; nothing is written if
any object is malformed, and every bad object is named.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The client checks the schemas: the promoted release's.
			snap, err := objects.ReadFile(args[0], nil)
			if err != nil {
				return err
			}
			var objs []client.Object
			for _, typ := range sortedTypes(snap) {
				for _, o := range snap.Types[typ] {
					objs = append(objs, client.Object{Type: typ, ID: o.ID, Data: o.Data})
				}
			}
			if err := a.putObjects(cmd, objs, keysFile); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Imported %d objects.\n", countObjects(snap))
			return nil
		},
	}
	releaseKeysFlag(cmd, &keysFile)
	return cmd
}

func newObjectExportCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: `Print every object as {"<type>": {"<id>": {...}}}, the import and plan --objects format, with their revisions`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withKV(cmd, func(ctx context.Context, kv clientv3.KV) error {
				snap, err := objects.Load(ctx, kv, a.prefix, nil)
				if err != nil {
					return err
				}
				for _, err := range snap.Ignored {
					a.log.Warn("not exported: a key outside the grammar", zap.Error(err))
				}
				for _, errs := range snap.Invalid {
					for _, err := range errs {
						a.log.Warn("not exported: a malformed object", zap.Error(err))
					}
				}
				out := map[string]any{objects.FileRevision: snap.Revision}
				revisions := map[string]map[string]int64{}
				for typ, list := range snap.Types {
					objs := map[string]map[string]any{}
					revisions[typ] = map[string]int64{}
					for _, o := range list {
						objs[o.ID] = o.Data
						revisions[typ][o.ID] = o.Revision
					}
					out[typ] = objs
				}
				out[objects.FileRevisions] = revisions
				return writeJSON(a.stdout, out, true)
			})
		},
	}
}

// schemas loads the schemas of the configuration directory.
func (a *app) schemas() (*schemas.Set, error) { return schemas.Load(a.configDir) }

// putObjects writes objs through the client's one object path, checked
// against the schemas of the promoted release, or of the configuration
// directory while none is. With release keys (keysFile, as the agent's
// --release-keys) the release's schemas are read only once it verifies.
func (a *app) putObjects(cmd *cobra.Command, objs []client.Object, keysFile string) error {
	sch, err := a.schemas()
	if err != nil {
		return err
	}
	verify, err := a.loadVerifier(keysFile)
	if err != nil {
		return err
	}
	return a.withCluster(cmd, func(ctx context.Context, c *cluster.Cluster) error {
		of := releases.NewStore(c.Client(), a.prefix).Schemas(verify)
		cli := client.New(c.Client(), client.Options{Prefix: a.prefix, RequestTimeout: a.timeout, Schemas: sch,
			ReleaseSchemas: func(ctx context.Context, id string) (client.Validator, error) { return of(ctx, id) }})
		_, err := cli.PutObjects(ctx, objs)
		return err
	})
}

func sortedTypes(snap *objects.Snapshot) []string {
	types := make([]string, 0, len(snap.Types))
	for t := range snap.Types {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}

func countObjects(snap *objects.Snapshot) int {
	n := 0
	for _, l := range snap.Types {
		n += len(l)
	}
	return n
}
