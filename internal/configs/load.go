package configs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/templates"
)

// rawConfig is the YAML shape of a configuration file.
type rawConfig struct {
	Name        string            `yaml:"name"`
	Subscribes  []string          `yaml:"subscribes"`
	DependsOn   []string          `yaml:"depends_on"`
	When        map[string]string `yaml:"when"`
	Directories []rawDirectory    `yaml:"directories"`
	Files       []rawFile         `yaml:"files"`
	Groups      []rawGroup        `yaml:"groups"`
	Users       []rawUser         `yaml:"users"`
	MinUID      *int              `yaml:"min_uid"`
	MinGID      *int              `yaml:"min_gid"`
	MaxUID      int               `yaml:"max_uid"`
	MaxGID      int               `yaml:"max_gid"`
	RemoveHome  bool              `yaml:"remove_home"`
	// The account policy's lists: literal, never templates.
	Adopt      []string  `yaml:"adopt"`
	Homes      []string  `yaml:"homes"`
	Shells     []string  `yaml:"shells"`
	DenyGroups []string  `yaml:"deny_groups"`
	ReuseUIDs  []int     `yaml:"reuse_uids"`
	ReuseGIDs  []int     `yaml:"reuse_gids"`
	Validate   Command   `yaml:"validate"`
	OnChange   []Command `yaml:"on_change"`
	Timeout    string    `yaml:"timeout"`
	// RenderTimeout and MaxFileSize raise the render budget of one file.
	RenderTimeout string `yaml:"render_timeout"`
	MaxFileSize   string `yaml:"max_file_size"`
}

type rawDirectory struct {
	Path    string  `yaml:"path"`
	ForEach string  `yaml:"for_each"`
	Mode    rawMode `yaml:"mode"`
	Owner   string  `yaml:"owner"`
	Group   string  `yaml:"group"`
}

type rawFile struct {
	Path     string  `yaml:"path"`
	ForEach  string  `yaml:"for_each"`
	Template string  `yaml:"template"`
	Content  *string `yaml:"content"`
	Mode     rawMode `yaml:"mode"`
	Owner    string  `yaml:"owner"`
	Group    string  `yaml:"group"`
	Check    Command `yaml:"check"`
	CheckAll Command `yaml:"check_all"`
}

type rawGroup struct {
	Name    string    `yaml:"name"`
	ForEach string    `yaml:"for_each"`
	GID     string    `yaml:"gid"`
	Members *[]string `yaml:"members"`
}

type rawUser struct {
	Name     string   `yaml:"name"`
	ForEach  string   `yaml:"for_each"`
	UID      string   `yaml:"uid"`
	Group    string   `yaml:"group"`
	Groups   []string `yaml:"groups"`
	Home     string   `yaml:"home"`
	Shell    string   `yaml:"shell"`
	Comment  string   `yaml:"comment"`
	Password string   `yaml:"password"`
}

// rawMode is an octal permission string. An unquoted 0644 is rejected:
// YAML versions disagree on whether it is octal.
type rawMode struct {
	text string
	set  bool
}

func (m *rawMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		// A TypeError lets the decoder go on and report the rest too.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: mode %s must be a quoted octal string such as \"0644\"", n.Line, n.Value)}}
	}
	m.text, m.set = n.Value, true
	return nil
}

func (m rawMode) parse(def fs.FileMode) (fs.FileMode, error) {
	if !m.set {
		return def, nil
	}
	v, err := strconv.ParseUint(m.text, 8, 32)
	if err != nil || v > 0o7777 || m.text == "" {
		return 0, fmt.Errorf("mode %q is not an octal permission between 0000 and 7777", m.text)
	}
	return toFileMode(uint32(v)), nil
}

// toFileMode converts Unix permission bits, including setuid, setgid and
// sticky, to an fs.FileMode.
func toFileMode(v uint32) fs.FileMode {
	m := fs.FileMode(v & 0o777)
	if v&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if v&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if v&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

type loader struct {
	dir         string // the configuration directory: commands run in it
	templateDir string
	// declared holds the literal accounts of the configuration being
	// built ("user:NAME", "group:NAME"): an owner among them is resolved
	// at apply time, once the account exists.
	declared map[string]bool
	// digest hashes the configuration being built: its file, then every
	// template it reads.
	digest hash.Hash
}

// command checks an argv and that its program exists.
func (l *loader) command(c Command, placeholders bool) error {
	if err := checkCommand(c, placeholders); err != nil {
		return err
	}
	return c.Executable(l.dir)
}

// yamlTypeNames makes yaml's "field x not found in type configs.rawFile"
// readable.
var yamlTypeNames = strings.NewReplacer(
	"not found in type configs.rawConfig", "is not a known configuration field",
	"not found in type configs.rawFile", "is not a known field of files",
	"not found in type configs.rawDirectory", "is not a known field of directories",
	"not found in type configs.rawUser", "is not a known field of users",
	"not found in type configs.rawGroup", "is not a known field of groups",
)

// DecodeYAML decodes raw, the content of the file path, into v, refusing
// unknown fields. It returns every error at once, each naming the file,
// with yaml's type names made readable by names. ok is false when nothing
// could be decoded (a syntax error); otherwise v holds what could be.
func DecodeYAML(path string, raw []byte, v any, names *strings.Replacer) (errs []error, ok bool) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && err != io.EOF {
		var te *yaml.TypeError
		if !errors.As(err, &te) { // a syntax error: nothing was decoded
			return []error{fmt.Errorf("%s: %s", path, err)}, false
		}
		for _, msg := range te.Errors {
			errs = append(errs, fmt.Errorf("%s: %s", path, names.Replace(msg)))
		}
	}
	return errs, true
}

// loadFile loads one configuration file and returns every error in it at
// once, each naming the file. The Config is returned whenever the YAML
// could be read at all, even with errors, so that the set can still check
// names, dependencies and cycles.
func (l *loader) loadFile(path string) (*Config, []error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{err}
	}
	var rc rawConfig
	errs, ok := DecodeYAML(path, raw, &rc, yamlTypeNames)
	if !ok {
		return nil, errs
	}
	l.digest = sha256.New()
	fmt.Fprintf(l.digest, "%s\x00%d\x00", filepath.Base(path), len(raw))
	l.digest.Write(raw)
	c, buildErrs := l.build(path, &rc)
	for _, e := range buildErrs {
		errs = append(errs, fmt.Errorf("%s: %w", path, e))
	}
	if c != nil {
		c.Digest = hex.EncodeToString(l.digest.Sum(nil))
	}
	return c, errs
}

func (l *loader) build(path string, rc *rawConfig) (*Config, []error) {
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	c := &Config{
		Name:       rc.Name,
		File:       path,
		Subscribes: rc.Subscribes,
		DependsOn:  rc.DependsOn,
		When:       rc.When,
		Validate:   rc.Validate,
		OnChange:   rc.OnChange,
		Timeout:    DefaultTimeout,

		RenderTimeout: DefaultRenderTimeout,
		MaxFileSize:   DefaultMaxFileSize,
	}
	if c.Name == "" {
		c.Name = strings.TrimSuffix(filepath.Base(path), ".yaml")
	}
	if err := api.CheckName("name", c.Name); err != nil {
		fail(err)
	}
	for _, t := range c.Subscribes {
		if err := api.CheckName("subscribes: type", t); err != nil {
			fail(err)
		}
	}
	if rc.Timeout != "" {
		d, err := time.ParseDuration(rc.Timeout)
		if err != nil || d <= 0 {
			fail(fmt.Errorf("timeout %q is not a positive duration such as 60s", rc.Timeout))
		}
		c.Timeout = d
	}
	if rc.RenderTimeout != "" {
		d, err := time.ParseDuration(rc.RenderTimeout)
		if err != nil || d <= 0 {
			fail(fmt.Errorf("render_timeout %q is not a positive duration such as 10s", rc.RenderTimeout))
		}
		c.RenderTimeout = d
	}
	if rc.MaxFileSize != "" {
		n, err := parseSize(rc.MaxFileSize)
		if err != nil {
			fail(fmt.Errorf("max_file_size %q: %w", rc.MaxFileSize, err))
		}
		c.MaxFileSize = n
	}
	if rc.Validate != nil {
		if err := l.command(rc.Validate, false); err != nil {
			fail(fmt.Errorf("validate: %w", err))
		}
	}
	for i, cmd := range rc.OnChange {
		if err := l.command(cmd, false); err != nil {
			fail(fmt.Errorf("on_change[%d]: %w", i, err))
		}
	}
	c.Accounts = accounts.Policy{MinUID: accounts.DefaultMin, MinGID: accounts.DefaultMin, MaxUID: rc.MaxUID, MaxGID: rc.MaxGID, RemoveHome: rc.RemoveHome,
		Adopt: rc.Adopt, Homes: rc.Homes, Shells: rc.Shells, DenyGroups: rc.DenyGroups, ReuseUIDs: rc.ReuseUIDs, ReuseGIDs: rc.ReuseGIDs}
	for i, v := range []*int{rc.MinUID, rc.MinGID} {
		if v != nil && *v < 1 {
			fail(fmt.Errorf("%s %d: must be 1 or more (0 is root)", []string{"min_uid", "min_gid"}[i], *v))
		}
	}
	if rc.MinUID != nil {
		c.Accounts.MinUID = *rc.MinUID
	}
	if rc.MinGID != nil {
		c.Accounts.MinGID = *rc.MinGID
	}
	if err := c.Accounts.CheckPolicy(); err != nil {
		fail(err)
	}
	declared := map[string]bool{} // literal account names: owners resolved at apply
	for i, rg := range rc.Groups {
		g, err := groupSpec(rg)
		if err != nil {
			fail(fmt.Errorf("groups[%d] %s: %w", i, rg.Name, err))
			continue
		}
		declared["group:"+rg.Name] = true
		c.Groups = append(c.Groups, g)
	}
	for i, ru := range rc.Users {
		u, err := userSpec(ru)
		if err != nil {
			fail(fmt.Errorf("users[%d] %s: %w", i, ru.Name, err))
			continue
		}
		declared["user:"+ru.Name] = true
		if ru.Group == "" {
			declared["group:"+ru.Name] = true
		}
		c.Users = append(c.Users, u)
	}
	l.declared = declared
	for i, rd := range rc.Directories {
		d, err := l.directory(rd)
		if err != nil {
			fail(fmt.Errorf("directories[%d] %s: %w", i, rd.Path, err))
			continue
		}
		c.Directories = append(c.Directories, d)
	}
	for i, rf := range rc.Files {
		f, err := l.file(rf)
		if err != nil {
			fail(fmt.Errorf("files[%d] %s: %w", i, rf.Path, err))
			continue
		}
		c.Files = append(c.Files, f)
	}
	if len(rc.Files) == 0 && len(rc.Directories) == 0 && len(rc.Users) == 0 && len(rc.Groups) == 0 {
		fail(errors.New("configuration has no files, directories, users or groups"))
	}
	return c, errs
}

func (l *loader) directory(rd rawDirectory) (Directory, error) {
	d := Directory{ForEach: rd.ForEach}
	var err error
	if d.Path, err = parsePath(rd.Path); err != nil {
		return d, err
	}
	if err := checkForEach(rd.ForEach); err != nil {
		return d, err
	}
	if d.Mode, err = rd.Mode.parse(DefaultDirMode); err != nil {
		return d, err
	}
	d.Ownership, d.OwnerTemplates, err = l.ownership(rd.Owner, rd.Group)
	return d, err
}

func (l *loader) file(rf rawFile) (File, error) {
	f := File{ForEach: rf.ForEach, Check: rf.Check, CheckAll: rf.CheckAll}
	var err error
	if f.Path, err = parsePath(rf.Path); err != nil {
		return f, err
	}
	if err := checkForEach(rf.ForEach); err != nil {
		return f, err
	}
	if f.Mode, err = rf.Mode.parse(DefaultFileMode); err != nil {
		return f, err
	}
	if f.Ownership, f.OwnerTemplates, err = l.ownership(rf.Owner, rf.Group); err != nil {
		return f, err
	}
	if rf.Check != nil {
		if err := l.command(rf.Check, true); err != nil {
			return f, fmt.Errorf("check: %w", err)
		}
	}
	if rf.CheckAll != nil {
		if rf.Check != nil {
			return f, errors.New("set either check or check_all, not both")
		}
		if err := l.command(rf.CheckAll, false); err != nil {
			return f, fmt.Errorf("check_all: %w", err)
		}
	}
	f.Body, err = l.body(rf)
	return f, err
}

func (l *loader) body(rf rawFile) (*templates.Template, error) {
	switch {
	case rf.Content != nil && rf.Template != "":
		return nil, errors.New("set either template or content, not both")
	case rf.Content != nil:
		t, err := templates.Parse("content", *rf.Content)
		if err != nil {
			return nil, fmt.Errorf("content: %w", err)
		}
		return t, nil
	case rf.Template == "":
		return nil, errors.New("set template or content")
	}
	if !filepath.IsLocal(rf.Template) {
		return nil, fmt.Errorf("template %q must be a relative path inside templates/", rf.Template)
	}
	p := filepath.Join(l.templateDir, rf.Template)
	text, err := os.ReadFile(p)
	if err == nil && l.digest != nil {
		fmt.Fprintf(l.digest, "%s\x00%d\x00", rf.Template, len(text))
		l.digest.Write(text)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("template %s: no such file", p)
		}
		return nil, fmt.Errorf("template %s: %w", p, err)
	}
	// The parse error already reads "template: <file>:<line>: ...".
	return templates.Parse(p, string(text))
}

// field parses one templated field of an account; "" is nil.
func field(name, text string) (*templates.Template, error) {
	if text == "" {
		return nil, nil
	}
	t, err := templates.Parse(name, text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

// fields parses a list of templated fields.
func fields(name string, texts []string) ([]*templates.Template, error) {
	out := []*templates.Template{}
	for i, text := range texts {
		t, err := field(fmt.Sprintf("%s[%d]", name, i), text)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// literalName checks a name that holds no template now.
func literalName(field, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if strings.Contains(name, "{{") {
		return nil
	}
	return accounts.CheckName(field, name)
}

func groupSpec(rg rawGroup) (GroupSpec, error) {
	g := GroupSpec{ForEach: rg.ForEach}
	if err := errors.Join(literalName("name", rg.Name), checkForEach(rg.ForEach)); err != nil {
		return g, err
	}
	var errs [3]error
	g.Name, errs[0] = field("name", rg.Name)
	g.GID, errs[1] = field("gid", rg.GID)
	if rg.Members != nil {
		g.Members, errs[2] = fields("members", *rg.Members)
	}
	return g, errors.Join(errs[:]...)
}

func userSpec(ru rawUser) (UserSpec, error) {
	u := UserSpec{ForEach: ru.ForEach}
	if err := errors.Join(literalName("name", ru.Name), checkForEach(ru.ForEach)); err != nil {
		return u, err
	}
	if ru.Password != "" && !strings.Contains(ru.Password, "{{") {
		return u, errors.New("password must come from object data, as a template such as {{ .Object.Data.password_hash }}: a hash in the configuration would be in every checkout")
	}
	var errs [8]error
	u.Name, errs[0] = field("name", ru.Name)
	u.UID, errs[1] = field("uid", ru.UID)
	u.Group, errs[2] = field("group", ru.Group)
	u.Home, errs[3] = field("home", ru.Home)
	u.Shell, errs[4] = field("shell", ru.Shell)
	u.Comment, errs[5] = field("comment", ru.Comment)
	u.Password, errs[6] = field("password", ru.Password)
	if ru.Groups != nil {
		u.Groups, errs[7] = fields("groups", ru.Groups)
	}
	return u, errors.Join(errs[:]...)
}

// parsePath parses a path template; its literal beginning must be absolute.
func parsePath(p string) (*templates.Template, error) {
	if p == "" {
		return nil, errors.New("path is empty")
	}
	if !strings.HasPrefix(p, "/") {
		return nil, errors.New("path must be absolute")
	}
	t, err := templates.Parse("path", p)
	if err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	return t, nil
}

func checkForEach(t string) error {
	if t == "" {
		return nil
	}
	return api.CheckName("for_each: type", t)
}

// ownership parses an owner and a group. A template, or the literal name
// of an account the configuration declares, is resolved at apply time,
// after the run's accounts exist; any other name is resolved now.
func (l *loader) ownership(owner, group string) (Ownership, OwnerTemplates, error) {
	var ot OwnerTemplates
	var err error
	late := func(kind, name string) bool { return strings.Contains(name, "{{") || l.declared[kind+":"+name] }
	lookOwner, lookGroup := owner, group
	if late("user", owner) {
		if ot.OwnerT, err = templates.Parse("owner", owner); err != nil {
			return Ownership{}, ot, fmt.Errorf("owner: %w", err)
		}
		lookOwner = ""
	}
	if late("group", group) {
		if ot.GroupT, err = templates.Parse("group", group); err != nil {
			return Ownership{}, ot, fmt.Errorf("group: %w", err)
		}
		lookGroup = ""
	}
	o, err := lookupOwnership(lookOwner, lookGroup)
	return o, ot, err
}

// lookupOwnership resolves owner and group names (or numeric IDs) on this
// node at load time, so that a typo is caught before anything is written.
func lookupOwnership(owner, group string) (Ownership, error) {
	o := Ownership{Owner: owner, Group: group}
	if owner != "" {
		u, err := user.Lookup(owner)
		if err != nil {
			if u, err = user.LookupId(owner); err != nil {
				return o, fmt.Errorf("owner %q: no such user", owner)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		o.UID = &uid
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return o, fmt.Errorf("group %q: no such group", group)
			}
		}
		gid, _ := strconv.Atoi(g.Gid)
		o.GID = &gid
	}
	return o, nil
}

// sizeUnits are the suffixes max_file_size accepts.
var sizeUnits = []struct {
	suffix string
	factor int
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// parseSize reads a byte count such as 16MiB, 512KiB or 1048576.
func parseSize(s string) (int, error) {
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(num))
		if err != nil || n <= 0 || n > (1<<40)/u.factor {
			break
		}
		return n * u.factor, nil
	}
	return 0, errors.New("not a size such as 16MiB, 512KiB or 1048576")
}
