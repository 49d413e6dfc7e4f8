package actions

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/configs"
)

// Handler defaults and limits.
const (
	DefaultTimeout     = time.Minute
	DefaultConcurrency = 1
	// MaxParamSize bounds one parameter value: it is passed in the
	// environment, where Linux refuses a string over 128 KiB.
	MaxParamSize = 64 << 10
	// BuiltinPrefix starts the names of the actions every agent answers;
	// handler files cannot use it.
	BuiltinPrefix = "ccm."
)

// Handler is one action a node answers, from <config-dir>/actions/<name>.yaml.
type Handler struct {
	Name    string
	File    string
	Command configs.Command
	Params  map[string]Param
	RunAs   RunAs
	Timeout time.Duration
	// Concurrency is how many requests of this action run at once on a
	// node; the rest wait their turn.
	Concurrency int
	// Serial holds the cluster lock while the handler runs, so that one
	// node at a time runs it (and no node converges meanwhile).
	Serial bool
	// SecretOutput seals the reply's output and error to the caller's
	// reply key, and keeps stderr out of the log.
	SecretOutput bool
}

// Param declares one parameter a handler accepts.
type Param struct {
	Pattern  *regexp.Regexp // nil: any value
	Required bool
	// Secret values are encrypted to the node and never stored, logged
	// or replied in clear.
	Secret bool
}

// RunAs is the UNIX user a handler runs as: a fixed user, or the one a
// parameter names (with a uid of at least MinUID).
type RunAs struct {
	User   string
	Param  string
	MinUID int
	// MinGID and DenyGroups bound the groups of a user a parameter
	// names (MinGID defaults to MinUID, DenyGroups to DefaultDenyGroups).
	MinGID     int
	DenyGroups []string
}

// Handlers is a loaded actions directory.
type Handlers struct {
	Dir    string
	byName map[string]*Handler
}

// Get returns a handler by action name.
func (h *Handlers) Get(name string) (*Handler, bool) {
	if h == nil {
		return nil, false
	}
	x, ok := h.byName[name]
	return x, ok
}

// Names returns the action names, sorted.
func (h *Handlers) Names() []string {
	if h == nil {
		return nil
	}
	return sortedKeys(h.byName)
}

// Dir returns the actions directory of a configuration directory.
func Dir(configDir string) string { return filepath.Join(configDir, "actions") }

type rawHandler struct {
	Name        string              `yaml:"name"`
	Command     configs.Command     `yaml:"command"`
	Params      map[string]rawParam `yaml:"params"`
	RunAs       *rawRunAs           `yaml:"run_as"`
	Timeout     string              `yaml:"timeout"`
	Concurrency *int                `yaml:"concurrency"`
	Serial      bool                `yaml:"serial"`
	// SecretOutput: see Handler.
	SecretOutput bool `yaml:"secret_output"`
}

type rawParam struct {
	Pattern  string `yaml:"pattern"`
	Required bool   `yaml:"required"`
	Secret   bool   `yaml:"secret"`
}

type rawRunAs struct {
	User       string    `yaml:"user"`
	Param      string    `yaml:"param"`
	MinUID     *int      `yaml:"min_uid"`
	MinGID     *int      `yaml:"min_gid"`
	DenyGroups *[]string `yaml:"deny_groups"`
}

var yamlTypeNames = strings.NewReplacer(
	"not found in type actions.rawHandler", "is not a known handler field",
	"not found in type actions.rawParam", "is not a known parameter field (pattern, required, secret)",
	"not found in type actions.rawRunAs", "is not a known run_as field (user, param, min_uid, min_gid, deny_groups)",
)

// paramName is the grammar of a parameter name: it becomes part of an
// environment variable.
var paramName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// LoadHandlers reads every <configDir>/actions/*.yaml and returns every
// error at once, each naming its file. A missing directory is no error:
// the node answers the built-in actions only.
func LoadHandlers(configDir string) (*Handlers, error) {
	dir := Dir(configDir)
	hs := &Handlers{Dir: dir, byName: map[string]*Handler{}}
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var errs []error
	for _, p := range paths {
		h, fileErrs := loadHandler(configDir, p)
		for _, e := range fileErrs {
			errs = append(errs, fmt.Errorf("%s: %w", p, e))
		}
		if h == nil {
			continue
		}
		if prev, ok := hs.byName[h.Name]; ok {
			errs = append(errs, fmt.Errorf("%s: action name %q is already used by %s", p, h.Name, prev.File))
			continue
		}
		hs.byName[h.Name] = h
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return hs, nil
}

// loadHandler loads one handler file; the errors do not name the file.
func loadHandler(configDir, path string) (*Handler, []error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{err}
	}
	var rh rawHandler
	decodeErrs, ok := configs.DecodeYAML("", raw, &rh, yamlTypeNames)
	var errs []error
	for _, e := range decodeErrs {
		errs = append(errs, errors.New(strings.TrimPrefix(e.Error(), ": ")))
	}
	if !ok {
		return nil, errs
	}
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	h := &Handler{
		Name: rh.Name, File: path, Command: rh.Command, Params: map[string]Param{},
		Timeout: DefaultTimeout, Concurrency: DefaultConcurrency, Serial: rh.Serial, SecretOutput: rh.SecretOutput,
	}
	if h.Name == "" {
		h.Name = strings.TrimSuffix(filepath.Base(path), ".yaml")
	}
	if err := api.CheckName("name", h.Name); err != nil {
		fail("%w", err)
	}
	if strings.HasPrefix(h.Name, BuiltinPrefix) {
		fail("name %q: names starting with %q are ccm's built-in actions", h.Name, BuiltinPrefix)
	}
	if err := h.Command.Check(); err != nil {
		fail("command: %w", err)
	} else if strings.HasPrefix(h.Command[0], "./") {
		// Shipped with the configuration, like ./check/ helpers.
		h.Command = append(configs.Command{filepath.Join(configDir, h.Command[0])}, h.Command[1:]...)
	} else if !filepath.IsAbs(h.Command[0]) {
		fail("command: %q is neither an absolute path nor ./ (the configuration directory); a handler never depends on $PATH", h.Command[0])
	}
	envNames := map[string]string{}
	for name, rp := range rh.Params {
		if !paramName.MatchString(name) {
			fail("params: %q is not a parameter name ([A-Za-z_][A-Za-z0-9_]*)", name)
			continue
		}
		if other, ok := envNames[EnvName(name)]; ok {
			fail("params: %q and %q both become %s", other, name, EnvName(name))
		}
		envNames[EnvName(name)] = name
		p := Param{Required: rp.Required, Secret: rp.Secret}
		if rp.Pattern != "" {
			if _, err := regexp.Compile(rp.Pattern); err != nil {
				fail("params: %s: pattern: %w", name, err)
				continue
			}
			// The whole value must match, anchors or not.
			p.Pattern = regexp.MustCompile(`^(?:` + rp.Pattern + `)$`)
		}
		h.Params[name] = p
	}
	if rh.Timeout != "" {
		d, err := time.ParseDuration(rh.Timeout)
		if err != nil || d <= 0 {
			fail("timeout %q is not a positive duration such as 60s", rh.Timeout)
		}
		h.Timeout = d
	}
	if rh.Concurrency != nil {
		if *rh.Concurrency < 1 {
			fail("concurrency %d: want 1 or more", *rh.Concurrency)
		}
		h.Concurrency = *rh.Concurrency
	}
	if err := h.setRunAs(rh.RunAs); err != nil {
		fail("run_as: %w", err)
	}
	return h, errs
}

// setRunAs checks and records run_as. It is required: a handler says
// which user it runs as, and root only explicitly.
func (h *Handler) setRunAs(r *rawRunAs) error {
	switch {
	case r == nil:
		return errors.New("required: {user: NAME}, or {param: P, min_uid: 1000}; root only as {user: root}")
	case (r.User == "") == (r.Param == ""):
		return errors.New("give exactly one of user and param")
	case r.User != "" && (r.MinUID != nil || r.MinGID != nil || r.DenyGroups != nil):
		return errors.New("min_uid, min_gid and deny_groups go with param, not with user")
	case r.User != "":
		h.RunAs = RunAs{User: r.User}
		return nil
	}
	p, ok := h.Params[r.Param]
	switch {
	case !ok:
		return fmt.Errorf("param %q is not declared in params", r.Param)
	case !p.Required:
		return fmt.Errorf("param %q must be required: true", r.Param)
	case p.Secret:
		return fmt.Errorf("param %q is secret and cannot name a user", r.Param)
	case r.MinUID == nil:
		return errors.New("min_uid is required with param, so that no request names a system user")
	case *r.MinUID < 1:
		return fmt.Errorf("min_uid %d: root and system users are never chosen by a parameter", *r.MinUID)
	}
	h.RunAs = RunAs{Param: r.Param, MinUID: *r.MinUID, MinGID: *r.MinUID, DenyGroups: DefaultDenyGroups}
	if r.MinGID != nil {
		if *r.MinGID < 1 {
			return fmt.Errorf("min_gid %d: the root group is never chosen by a parameter", *r.MinGID)
		}
		h.RunAs.MinGID = *r.MinGID
	}
	if r.DenyGroups != nil {
		h.RunAs.DenyGroups = *r.DenyGroups
	}
	return nil
}

// EnvName is the environment variable a parameter is passed in.
func EnvName(param string) string { return "CCM_PARAM_" + strings.ToUpper(param) }

// CheckParams returns every problem with params at once, one per line:
// an undeclared parameter, a missing required one, one that breaks its
// pattern, or one that cannot be passed to a process (too large, a NUL).
func (h *Handler) CheckParams(params map[string]string) error {
	var errs []error
	for _, n := range sortedKeys(params) {
		v := params[n]
		p, ok := h.Params[n]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("parameter %q is not declared by action %s", n, h.Name))
		case len(v) > MaxParamSize:
			errs = append(errs, fmt.Errorf("parameter %s: %d bytes, over the limit of %d", n, len(v), MaxParamSize))
		case strings.IndexByte(v, 0) >= 0:
			errs = append(errs, fmt.Errorf("parameter %s: contains a NUL byte", n))
		case p.Pattern != nil && !p.Pattern.MatchString(v):
			errs = append(errs, fmt.Errorf("parameter %s: does not match the pattern %s", n, p.Pattern))
		}
	}
	for _, n := range sortedKeys(h.Params) {
		if _, ok := params[n]; !ok && h.Params[n].Required {
			errs = append(errs, fmt.Errorf("parameter %s is required", n))
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
