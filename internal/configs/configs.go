package configs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/templates"
	"github.com/ccm-dev/ccm/internal/toposort"
)

// ErrNoConfigurations is returned for a directory without any *.yaml. An
// agent or apply refuses it: a full run would remove every file that
// configurations wrote before, and an empty directory is more often a
// wrong --config-dir than an intent.
var ErrNoConfigurations = errors.New("no configuration (*.yaml) found")

// DefaultTimeout bounds each command of a configuration that sets none.
const DefaultTimeout = 60 * time.Second

// The render budget of one file, unless a configuration raises it: a
// template that writes more, or runs longer, fails its configuration.
const (
	DefaultRenderTimeout = 10 * time.Second
	DefaultMaxFileSize   = 16 << 20
)

// Default modes for files and directories that set none.
const (
	DefaultFileMode fs.FileMode = 0o644
	DefaultDirMode  fs.FileMode = 0o755
)

// Config is one validated configuration.
type Config struct {
	Name        string
	File        string // the YAML file it was loaded from
	Subscribes  []string
	DependsOn   []string
	When        map[string]string
	Directories []Directory
	Files       []File
	// Groups and Users are the accounts the configuration declares; they
	// are created before its directories and files.
	Groups   []GroupSpec
	Users    []UserSpec
	Accounts accounts.Policy
	Validate Command // nil when unset
	OnChange []Command
	Timeout  time.Duration
	// RenderTimeout and MaxFileSize bound the rendering of one file.
	RenderTimeout time.Duration
	MaxFileSize   int
	// Digest is the SHA-256 of the configuration's definition: its YAML
	// file and the templates it reads. A changed definition is a change
	// on every node, which runs validate and on_change once.
	Digest string
}

// Ownership is the owner and group a path must have. A nil ID with an
// empty name leaves that attribute as the filesystem makes it; a nil ID
// with a name (from a template) is resolved when the file is applied,
// after the run's accounts exist.
type Ownership struct {
	Owner, Group string
	UID, GID     *int
}

// OwnerTemplates are an owner and a group rendered from the object, such
// as "{{ .Object.ID }}"; nil when the name is literal or unset.
type OwnerTemplates struct {
	OwnerT, GroupT *templates.Template
}

// GroupSpec is a group, or with ForEach one group per object, that a
// configuration declares. Every field is a template over the object.
type GroupSpec struct {
	ForEach string
	Name    *templates.Template
	GID     *templates.Template   // nil: the tools pick one
	Members []*templates.Template // nil: the members are left alone
}

// UserSpec is a user, or with ForEach one user per object, that a
// configuration declares. Every field is a template over the object; nil
// when unset.
type UserSpec struct {
	ForEach                                string
	Name, UID, Group, Home, Shell, Comment *templates.Template
	Password                               *templates.Template // from object data only
	Groups                                 []*templates.Template
}

// Directory is a directory a configuration ensures exists.
type Directory struct {
	Path    *templates.Template
	ForEach string // empty, or an object type: one directory per object
	Mode    fs.FileMode
	Ownership
	OwnerTemplates
}

// File is a file, or with ForEach one file per object, a configuration
// renders.
type File struct {
	Path    *templates.Template
	ForEach string
	Body    *templates.Template // from template: or content:
	Mode    fs.FileMode
	Ownership
	OwnerTemplates
	Check Command // nil when unset; may use {{ .Staged }} and {{ .Path }}
	// CheckAll, when set, checks the entry's staged files of one run in
	// one process: the staged paths are appended to the argv. It takes no
	// placeholders. A set it refuses is bisected to find the files at
	// fault (see the applier).
	CheckAll Command
}

// Dir is the directory the configuration was loaded from, where its
// commands run ("" for one not loaded from a file).
func (c *Config) Dir() string {
	if c.File == "" {
		return ""
	}
	return filepath.Dir(c.File)
}

// Types returns every object type the configuration reads, sorted: the
// subscribed ones and those iterated by for_each.
func (c *Config) Types() []string {
	set := map[string]bool{}
	for _, t := range c.Subscribes {
		set[t] = true
	}
	var forEach []string
	for _, f := range c.Files {
		forEach = append(forEach, f.ForEach)
	}
	for _, d := range c.Directories {
		forEach = append(forEach, d.ForEach)
	}
	for _, g := range c.Groups {
		forEach = append(forEach, g.ForEach)
	}
	for _, u := range c.Users {
		forEach = append(forEach, u.ForEach)
	}
	for _, t := range forEach {
		if t != "" {
			set[t] = true
		}
	}
	types := make([]string, 0, len(set))
	for t := range set {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}

// Matches reports whether a node with these labels runs the configuration.
func (c *Config) Matches(labels map[string]string) bool {
	for k, v := range c.When {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Set is a loaded configuration directory.
type Set struct {
	Dir     string
	Configs map[string]*Config
	// Order lists every configuration name in dependency order.
	Order []string
}

// Get returns a configuration by name.
func (s *Set) Get(name string) (*Config, bool) {
	c, ok := s.Configs[name]
	return c, ok
}

// Load reads and validates every *.yaml file of dir.
func Load(dir string) (*Set, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	}
	sort.Strings(paths)
	l := loader{dir: dir, templateDir: filepath.Join(dir, "templates")}
	set := &Set{Dir: dir, Configs: map[string]*Config{}}
	// Configurations with errors still take part in the name, dependency
	// and cycle checks, so one pass reports everything.
	broken := map[string]bool{}
	var errs []error
	for _, p := range paths {
		c, fileErrs := l.loadFile(p)
		errs = append(errs, fileErrs...)
		if c == nil {
			continue
		}
		if prev, ok := set.Configs[c.Name]; ok {
			errs = append(errs, fmt.Errorf("%s: configuration name %q is already used by %s", p, c.Name, prev.File))
			continue
		}
		set.Configs[c.Name] = c
		broken[c.Name] = len(fileErrs) > 0
	}
	errs = append(errs, checkPathsClaimedTwice(set)...)
	order, err := orderConfigs(set, broken)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoConfigurations)
	}
	set.Order = order
	return set, nil
}

func orderConfigs(set *Set, broken map[string]bool) ([]string, error) {
	deps := map[string][]string{}
	var errs []error
	for _, name := range sortedNames(set) {
		c := set.Configs[name]
		deps[name] = nil
		for _, d := range c.DependsOn {
			dep, ok := set.Configs[d]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s: depends_on %q: no such configuration", c.File, d))
				continue
			case broken[d] && !broken[name]:
				errs = append(errs, fmt.Errorf("%s: depends_on %q: that configuration has errors (%s), so this one cannot run either", c.File, d, dep.File))
			}
			deps[name] = append(deps[name], d)
		}
	}
	order, err := toposort.Sort(deps)
	if err != nil {
		var ce *toposort.CycleError
		if errors.As(err, &ce) {
			err = fmt.Errorf("%s: %w", cycleFiles(set, ce), err)
		}
		errs = append(errs, err)
	}
	return order, errors.Join(errs...)
}

// cycleFiles names the files involved in the cycles.
func cycleFiles(set *Set, ce *toposort.CycleError) string {
	seen := map[string]bool{}
	var files []string
	for _, c := range ce.Cycles {
		for _, n := range c {
			if f := set.Configs[n].File; !seen[f] {
				seen[f] = true
				files = append(files, f)
			}
		}
	}
	sort.Strings(files)
	return strings.Join(files, ", ")
}

// checkPathsClaimedTwice rejects two configurations writing one literal path.
// Paths built from objects are checked again after rendering.
func checkPathsClaimedTwice(set *Set) []error {
	owner := map[string]string{}
	var errs []error
	for _, name := range sortedNames(set) {
		c := set.Configs[name]
		for _, f := range c.Files {
			p := f.Path.Root.String()
			if strings.Contains(p, "{{") {
				continue
			}
			if prev, ok := owner[p]; ok && prev != name {
				errs = append(errs, fmt.Errorf("%s: file %s is also written by configuration %q", c.File, p, prev))
				continue
			}
			owner[p] = name
		}
	}
	return errs
}

func sortedNames(set *Set) []string {
	names := make([]string, 0, len(set.Configs))
	for n := range set.Configs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// placeholder matches the only template actions a command may contain.
var placeholder = regexp.MustCompile(`\{\{\s*\.(Staged|Path)\s*\}\}`)

// Command is an argv list run without a shell.
type Command []string

// Expand returns the argv with {{ .Staged }} and {{ .Path }} replaced.
func (c Command) Expand(staged, path string) []string {
	out := make([]string, len(c))
	for i, arg := range c {
		out[i] = placeholder.ReplaceAllStringFunc(arg, func(m string) string {
			if strings.Contains(m, "Staged") {
				return staged
			}
			return path
		})
	}
	return out
}

func (c Command) String() string { return strings.Join(c, " ") }

// checkCommand validates an argv; placeholders says whether {{ .Staged }}
// and {{ .Path }} are allowed.
func checkCommand(c Command, placeholders bool) error {
	if len(c) == 0 || c[0] == "" {
		return errors.New("command is empty")
	}
	for _, arg := range c {
		rest := arg
		if placeholders {
			rest = placeholder.ReplaceAllString(arg, "")
		}
		if strings.Contains(rest, "{{") {
			if placeholders {
				return fmt.Errorf("argument %q: only {{ .Staged }} and {{ .Path }} may be used in a command; object data never reaches a command line", arg)
			}
			return fmt.Errorf("argument %q: templates are not allowed here; object data never reaches a command line", arg)
		}
	}
	return nil
}

// Check validates an argv that takes no placeholders, such as a handler's
// command.
func (c Command) Check() error { return checkCommand(c, false) }

// Executable returns an error unless the command's program exists and is
// executable: a path (relative ones from dir, the working directory
// commands run in), or a name found on $PATH. A configuration that names a
// missing helper is refused at load, not by every run.
func (c Command) Executable(dir string) error {
	prog := c[0]
	if !strings.Contains(prog, "/") {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("command %q: %q is not on $PATH (%s)", strings.Join(c, " "), prog, os.Getenv("PATH"))
		}
		return nil
	}
	p := prog
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	info, err := os.Stat(p)
	switch {
	case err != nil:
		return fmt.Errorf("command %q: %s does not exist", strings.Join(c, " "), p)
	case !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("command %q: %s is not an executable file", strings.Join(c, " "), p)
	}
	return nil
}
