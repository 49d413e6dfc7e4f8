package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// The hostile-object corpus: for every field of every object the example
// stack reads, hostile values, each in an object of its own, applied as
// root with the real shadow-utils, nginx -t and php-fpm -t under --root.
// After each batch: the system accounts' lines are byte-identical, no file
// is outside the configurations' paths, nothing is owned by a system
// account because of data, no cron file runs as a system user, ccm is
// alive, and at most the hostile objects are held (the flag is never
// raised). make test runs a sample; make soak (CCM_CORPUS=all) all of it.
//
// The fields are found, not listed: every leaf of examples/objects.json,
// and every field the example's configurations and templates read by name
// (.Object.Data.NAME, get .Object.Data "NAME"). A field added to the
// example is in the corpus with no code here.

// hostileValues are what each field is set to.
var hostileValues = []any{
	"a\nroot:$6$PWNED:1::::::", "a\rb", "a:0:0", "a\x00b", "..", "../../etc/passwd", "/", "-o", "--help",
	strings.Repeat("x", 64<<10), 0, -1, 65534, 2147483648, 2e10, 1.5, "\u202eevil", "аdmin",
	"root", "daemon", "nobody", "sudo", "adm", "* * * * * root id >/tmp/pwned #", "$6$abc\nroot:$6$PWNED",
	"%2000000000d", "{{ .Object.ID }}", "", nil,
}

// hostileIDs are object ids that name system accounts: an object a
// customer could create as users/<id>.
var hostileIDs = []string{"root", "daemon", "nobody", "sudo", "adm", "www-data"}

// corpusCase is one hostile object: the field it breaks and its value.
type corpusCase struct {
	typ, id, field string
	data           map[string]any
}

// exampleFields finds the fields the example reads: the leaves of its
// objects, by path, and the names its files read from .Object.Data.
func exampleFields(t *testing.T) (samples map[string]map[string]any, leaves map[string][]string) {
	t.Helper()
	raw, err := os.ReadFile("../examples/objects.json")
	require.NoError(t, err)
	var all map[string]map[string]map[string]any
	require.NoError(t, json.Unmarshal(raw, &all))
	samples, leaves = map[string]map[string]any{}, map[string][]string{}
	// A configuration reads, by name, the fields its YAML and its
	// templates name; they are fields of the types it subscribes to.
	named := map[string]map[string]bool{}
	re := regexp.MustCompile(`\.Object\.Data\.([A-Za-z_][A-Za-z0-9_]*)|\.Object\.Data "([A-Za-z_][A-Za-z0-9_]*)"`)
	subs := regexp.MustCompile(`(?m)^subscribes:\s*\[([^\]]*)\]`)
	tmplRef := regexp.MustCompile(`(?m)template:\s*"?([^"\s]+)`)
	yamls, err := filepath.Glob("../examples/ccm/*.yaml")
	require.NoError(t, err)
	for _, y := range yamls {
		text, err := os.ReadFile(y)
		require.NoError(t, err)
		all := string(text)
		for _, m := range tmplRef.FindAllStringSubmatch(all, -1) {
			tt, err := os.ReadFile(filepath.Join("../examples/ccm/templates", m[1]))
			require.NoError(t, err)
			all += string(tt)
		}
		for _, sm := range subs.FindAllStringSubmatch(all, -1) {
			for _, typ := range strings.Split(sm[1], ",") {
				typ = strings.TrimSpace(typ)
				if named[typ] == nil {
					named[typ] = map[string]bool{}
				}
				for _, m := range re.FindAllStringSubmatch(all, -1) {
					named[typ][m[1]+m[2]] = true
				}
			}
		}
	}
	for typ, objs := range all {
		ids := slices.Sorted(func(yield func(string) bool) {
			for id := range objs {
				if !yield(id) {
					return
				}
			}
		})
		samples[typ] = objs[ids[0]]
		set := map[string]bool{}
		for _, id := range ids {
			walkLeaves(objs[id], "", func(p string) { set[p] = true })
		}
		for n := range named[typ] {
			set[n] = true
		}
		leaves[typ] = slices.Sorted(func(yield func(string) bool) {
			for p := range set {
				if !yield(p) {
					return
				}
			}
		})
	}
	return samples, leaves
}

// walkLeaves calls fn with the path of every leaf of v ("a.b", "l.0.c").
func walkLeaves(v any, prefix string, fn func(string)) {
	join := func(k string) string {
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			walkLeaves(e, join(k), fn)
		}
	case []any:
		for i, e := range x {
			walkLeaves(e, join(strconv.Itoa(i)), fn)
		}
	default:
		fn(prefix)
	}
}

// setPath sets the leaf at p (made if missing) in a copy of v.
func setPath(v map[string]any, p string, value any) map[string]any {
	raw, _ := json.Marshal(v)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	parts := strings.Split(p, ".")
	var cur any = out
	for i, k := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				c[k] = value
				return out
			}
			if c[k] == nil {
				c[k] = map[string]any{}
			}
			cur = c[k]
		case []any:
			n, _ := strconv.Atoi(k)
			if n >= len(c) {
				return out
			}
			if last {
				c[n] = value
				return out
			}
			cur = c[n]
		default:
			return out
		}
	}
	return out
}

// corpus is every hostile case, in a stable order.
func corpus(t *testing.T) []corpusCase {
	samples, leaves := exampleFields(t)
	var out []corpusCase
	n := 0
	for _, typ := range slices.Sorted(func(yield func(string) bool) {
		for typ := range samples {
			if !yield(typ) {
				return
			}
		}
	}) {
		for _, field := range leaves[typ] {
			for _, v := range hostileValues {
				n++
				data := setPath(samples[typ], field, v)
				id := fmt.Sprintf("h%04d", n)
				if typ == "users" && field != "uid" {
					data["uid"] = 3000 + n // each its own account
				}
				if typ == "certificates" && field != "site" {
					// A certificate names the site it serves: one that names
					// a benign customer's site changes that site by design.
					data["site"] = id
				}
				out = append(out, corpusCase{typ: typ, id: id, field: field, data: data})
			}
		}
	}
	for i, id := range hostileIDs {
		data := setPath(samples["users"], "uid", 2100+i)
		out = append(out, corpusCase{typ: "users", id: id, field: "(id)", data: data})
	}
	return out
}

func TestTheHostileCorpusNeverReachesRoot(t *testing.T) {
	needTools(t)
	needRoot(t)
	cases := corpus(t)
	if os.Getenv("CCM_CORPUS") != "all" {
		// The sample: every field with a few values, and every hostile id.
		var sample []corpusCase
		for i, c := range cases {
			if i%7 == 0 || c.field == "(id)" {
				sample = append(sample, c)
			}
		}
		cases = sample
	}
	etcd := etcdtest.New(t, 1)
	cli := etcd.Client(t)
	ctx := context.Background()
	dir := copyDir(t, "../examples/ccm")
	// The schema is a defence of its own; the corpus tests what is behind it.
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "schemas")))
	n := newNode(t, "web0", dir, etcd.Endpoints())
	n.env = []string{"CHECK_SKIP=0"}
	system := systemLines(t, n.root)

	raw, err := os.ReadFile("../examples/objects.json")
	require.NoError(t, err)
	var benign map[string]map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &benign))
	// The benign objects, but the certificate: its files are not on a
	// test node, so nginx -t refuses the site that uses it.
	delete(benign, "certificates")
	for typ, objs := range benign {
		for id, v := range objs {
			_, err := cli.Put(ctx, "/ccm/objects/"+typ+"/"+id, string(v))
			require.NoError(t, err)
		}
	}
	patterns := pathPatterns(t, dir)
	c := cluster.New(cli, cluster.Options{})
	const batch = 60
	for start := 0; start < len(cases); start += batch {
		part := cases[start:min(start+batch, len(cases))]
		hostile := map[string]bool{}
		for _, hc := range part {
			v, _ := json.Marshal(hc.data)
			_, err := cli.Put(ctx, "/ccm/objects/"+hc.typ+"/"+hc.id, string(v))
			require.NoError(t, err)
			hostile[hc.typ+"/"+hc.id] = true
		}
		r := n.run("", "apply", "--once", "--lock-ttl", "5s")
		require.NotEqual(t, -1, r.code, "ccm is alive")
		s, err := c.Status(ctx, "web0")
		require.NoError(t, err)
		require.NotNil(t, s)
		require.Equal(t, api.ResultConverged, s.Result, "batch %d: the flag is never raised: %s", start/batch, s.Error)
		records, err := c.Quarantines(ctx)
		require.NoError(t, err)
		for _, q := range records {
			assert.True(t, hostile[q.Object()], "batch %d: only a hostile object is held, not %s: %s", start/batch, q.Object(), q.Error)
		}
		assert.Equal(t, system, systemLines(t, n.root), "batch %d: the system accounts are byte-identical", start/batch)
		checkTree(t, n.root, patterns)
		// The next batch starts from the benign objects alone.
		for _, hc := range part {
			_, err := cli.Delete(ctx, "/ccm/objects/"+hc.typ+"/"+hc.id)
			require.NoError(t, err)
		}
	}
	for _, f := range []string{"/etc/nginx/sites-enabled/shop.conf", "/etc/php/8.2/fpm/pool.d/blog.conf", "/etc/cron.d/ccm-alice"} {
		assert.FileExists(t, filepath.Join(n.root, f), "the benign objects converged")
	}
}

// systemLines are the passwd, shadow and group lines of the accounts
// below min_uid and min_gid (1000).
func systemLines(t *testing.T, root string) map[string][]string {
	out := map[string][]string{}
	for _, name := range []string{"passwd", "shadow", "group", "gshadow"} {
		raw, err := os.ReadFile(filepath.Join(root, "etc", name))
		require.NoError(t, err)
		ids := map[string]int{}
		if name == "shadow" || name == "gshadow" {
			src := map[string]string{"shadow": "passwd", "gshadow": "group"}[name]
			praw, _ := os.ReadFile(filepath.Join(root, "etc", src))
			for _, l := range strings.Split(string(praw), "\n") {
				if f := strings.Split(l, ":"); len(f) > 2 {
					ids[f[0]], _ = strconv.Atoi(f[2])
				}
			}
		}
		for _, l := range strings.Split(string(raw), "\n") {
			f := strings.Split(l, ":")
			if len(f) < 3 {
				continue
			}
			id, err := strconv.Atoi(f[2])
			if name == "shadow" || name == "gshadow" {
				id, err = ids[f[0]], nil
				if _, ok := ids[f[0]]; !ok {
					id = 0 // an entry without its account: count it as the system's
				}
			}
			if err != nil || id < 1000 || id >= 60000 {
				out[name] = append(out[name], l)
			}
		}
		sort.Strings(out[name])
	}
	return out
}

// pathPatterns are the paths the example's configurations may write, as
// globs ({{ ... }} is *), with the account tools' own files.
func pathPatterns(t *testing.T, dir string) []string {
	out := []string{"/etc/passwd*", "/etc/shadow*", "/etc/group*", "/etc/gshadow*", "/etc/shells", "/etc/subuid*", "/etc/subgid*", "/etc/.pwd.lock"}
	re := regexp.MustCompile(`(?m)^\s*-?\s*path:\s*"?([^"\n]+)"?`)
	tmpl := regexp.MustCompile(`\{\{[^}]*\}\}`)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		text, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		for _, m := range re.FindAllStringSubmatch(string(text), -1) {
			p := tmpl.ReplaceAllString(strings.TrimSpace(m[1]), "*")
			out = append(out, p, path.Dir(p))
		}
	}
	// A home's contents are its user's.
	return append(out, "/home/*", "/srv/www/*", "/etc", "/etc/cron.d", "/etc/nginx", "/etc/php", "/etc/php/8.2", "/etc/php/8.2/fpm", "/home", "/srv", "/srv/www")
}

// checkTree walks root: every path is one the configurations declare,
// nothing under a home or document root is a system account's, and every
// cron file runs as a customer.
func checkTree(t *testing.T, root string, patterns []string) {
	t.Helper()
	users := map[string]int{}
	raw, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 {
			users[f[0]], _ = strconv.Atoi(f[2])
		}
	}
	require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel := "/" + strings.TrimPrefix(p, root+"/")
		if !slices.ContainsFunc(patterns, func(g string) bool { ok, _ := path.Match(g, rel); return ok }) {
			t.Errorf("%s is outside the configurations' paths", rel)
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		if strings.HasPrefix(rel, "/home/") || strings.HasPrefix(rel, "/srv/www/") {
			if sys.Uid < 1000 || sys.Uid >= 60000 || sys.Gid < 1000 || sys.Gid >= 60000 {
				t.Errorf("%s is owned by %d:%d, a system account, because of data", rel, sys.Uid, sys.Gid)
			}
		}
		if strings.HasPrefix(rel, "/etc/php/8.2/fpm/pool.d/") && !d.IsDir() {
			text, _ := os.ReadFile(p)
			for _, l := range strings.Split(string(text), "\n") {
				if k, v, ok := strings.Cut(l, "="); ok && (strings.TrimSpace(k) == "user" || strings.TrimSpace(k) == "group") {
					if id, ok := users[strings.TrimSpace(v)]; !ok || id < 1000 || id >= 60000 {
						t.Errorf("%s runs a pool as %q, not a customer's account", rel, strings.TrimSpace(v))
					}
				}
			}
		}
		if strings.HasPrefix(rel, "/etc/cron.d/") && !d.IsDir() {
			text, _ := os.ReadFile(p)
			for _, l := range strings.Split(string(text), "\n") {
				f := strings.Fields(l)
				if len(f) < 6 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "=") {
					continue
				}
				if id, ok := users[f[5]]; !ok || id < 1000 || id >= 60000 {
					t.Errorf("%s runs a job as %q, not a customer's account: %q", rel, f[5], l)
				}
			}
		}
		return nil
	}))
}
