package applier

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"reflect"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/render"
)

// manifest is what ccm remembers of one configuration between runs.
type manifest struct {
	// Root is the --root the files were written under. A manifest for
	// another root is refused: its paths mean other files there.
	Root string `json:"root"`
	// Files lists every path (as the configuration names it) that the
	// configuration wrote and still owns.
	Files []string `json:"files"`
	// OnChangePending is set from a change until on_change has succeeded.
	OnChangePending bool `json:"on_change_pending,omitempty"`
	// Objects maps a file of a for_each entry to its object ("type/id"):
	// the files of a quarantined object are kept, not pruned.
	Objects map[string]string `json:"objects,omitempty"`
	// Owned is the users and groups the configuration created: the only
	// accounts it removes.
	accounts.Owned
	// Digest is the configuration's definition (configs.Config.Digest)
	// when it last converged: a new one runs validate and on_change.
	Digest string `json:"digest,omitempty"`
	// from is an output whose rendered paths Files lists, in its order,
	// none held back (nil: not known): a run whose output has the same
	// files (render.Output.SameFiles) and holds none back records Files
	// and Objects again, unchanged, without listing them (unchanged).
	from *render.Output
}

// unchanged reports whether applying a plan of out that records files
// records m's Files and Objects as they are: files is m.Files itself, and
// out has the files of m.from, none held back. (Objects maps a rendered
// path to its object, else to what the manifest before had: the same
// files give the same map.)
func (m manifest) unchanged(out *render.Output, files []string) bool {
	return m.from != nil && len(files) > 0 && len(files) == len(m.Files) && &files[0] == &m.Files[0] &&
		len(out.Held) == 0 && out.SameFiles(m.from)
}

// rendersExactly reports whether files are out's paths, in its order,
// none held back: a manifest of files may record out as its from.
func rendersExactly(out *render.Output, files []string) bool {
	if len(out.Held) > 0 || len(files) != len(out.Files) {
		return false
	}
	for i := range files {
		if files[i] != out.Files[i].Path {
			return false
		}
	}
	return true
}

// same reports whether two manifests record the same thing.
func (m manifest) same(o manifest) bool {
	return m.OnChangePending == o.OnChangePending && m.Digest == o.Digest && sameStrings(m.Files, o.Files) && sameMap(m.Objects, o.Objects) &&
		slices.Equal(m.Users, o.Users) && slices.Equal(m.Groups, o.Groups) && maps.Equal(m.Owned.Objects, o.Owned.Objects)
}

// sameStrings is slices.Equal, at once for one slice (a manifest that
// records the files it had).
func sameStrings(a, b []string) bool {
	if len(a) == len(b) && len(a) > 0 && &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// sameMap is maps.Equal, at once for one map.
func sameMap(a, b map[string]string) bool {
	if len(a) == len(b) && len(a) > 0 && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true
	}
	return maps.Equal(a, b)
}

// manifestDir holds the manifests, in the state directory.
const manifestDir = "configs"

func manifestPath(config string) string { return path.Join(manifestDir, config+".json") }

func (a *Applier) loadManifest(config string) (manifest, error) {
	if m, ok := a.manifests[config]; ok {
		return m, nil
	}
	var m manifest
	raw, err := a.state.readFile(manifestPath(config))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	name := a.state.name(manifestPath(config))
	if err != nil {
		return m, fmt.Errorf("state: %w", err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, fmt.Errorf("state %s: %w", name, err)
	}
	if m.Root != "" && m.Root != a.opts.Root {
		return m, fmt.Errorf("state %s was written for root %s, not %s: refusing to manage files by it (use the state directory of that root)", name, m.Root, a.opts.Root)
	}
	a.rememberManifest(config, m)
	return m, nil
}

// saveManifest writes m unless it is what the state directory already
// holds.
func (a *Applier) saveManifest(config string, m manifest) error {
	m.Root = a.opts.Root
	if old, ok := a.manifests[config]; ok && old.same(m) {
		if m.from != nil { // the same files: the newer output says so too
			old.from = m.from
			a.manifests[config] = old
		}
		return nil
	}
	a.forgetManifest(config)
	if err := a.writeState(manifestPath(config), m); err != nil {
		return err
	}
	a.rememberManifest(config, m)
	return nil
}

// dropManifest forgets a configuration whose files are all removed.
func (a *Applier) dropManifest(config string) error {
	a.forgetManifest(config)
	if err := a.state.remove(manifestPath(config)); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// orphans lists the configurations that have a manifest but that this node
// no longer runs: deleted from the directory, or whose when no longer
// matches the node's labels. Their files are removed by a full run.
func (a *Applier) orphans(set *configs.Set) []string {
	entries, err := a.state.readDir(manifestDir)
	if err != nil {
		return nil // unreadable: loading a manifest says why
	}
	var names []string
	for _, e := range entries {
		n, ok := cutJSON(e)
		if !ok {
			continue
		}
		if c, ok := set.Get(n); ok && c.Matches(a.opts.Node.Labels) {
			continue
		}
		names = append(names, n)
	}
	return names
}

// restoreState writes again every manifest this Applier holds whose file
// is gone, for instance because the state directory was deleted under a
// running agent: what ccm wrote stays known, so it is still pruned.
func (a *Applier) restoreState() error {
	var errs []error
	for _, config := range slices.Sorted(maps.Keys(a.manifests)) {
		if st, err := a.state.lstat(manifestPath(config)); err != nil || st.exists {
			continue
		}
		m := a.manifests[config]
		a.forgetManifest(config)
		a.log.Warn("manifest missing from the state directory; writing it again", zap.String("config", config))
		if err := a.saveManifest(config, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cutJSON returns the configuration a state file is for.
func cutJSON(e fs.DirEntry) (string, bool) {
	n, ok := strings.CutSuffix(e.Name(), ".json")
	return n, ok && e.Type().IsRegular()
}

// rememberManifest caches a manifest as the state directory holds it, and indexes
// its files.
func (a *Applier) rememberManifest(config string, m manifest) {
	a.forgetManifest(config)
	a.manifests[config] = m
	for _, p := range m.Files {
		a.listed[p]++
	}
}

// forgetManifest forgets a manifest, so that it is read again.
func (a *Applier) forgetManifest(config string) {
	old, ok := a.manifests[config]
	if !ok {
		return
	}
	for _, p := range old.Files {
		if a.listed[p]--; a.listed[p] <= 0 {
			delete(a.listed, p)
		}
	}
	delete(a.manifests, config)
}
