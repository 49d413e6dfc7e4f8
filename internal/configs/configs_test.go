package configs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/configs"
)

// writeDir creates a configuration directory from file name -> content.
func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	return dir
}

const simple = "files:\n  - path: /etc/x\n    content: x\n"

func TestLoadRejectsBadDirectories(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string // $DIR is the directory
	}{
		{"yaml syntax", map[string]string{"a.yaml": "files: [\n"},
			"$DIR/a.yaml: yaml: line 1: did not find expected node content"},
		{"unknown field", map[string]string{"a.yaml": simple + "subscribe: [x]\n"},
			"$DIR/a.yaml: line 4: field subscribe is not a known configuration field"},
		{"unknown file field", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    owner_name: root\n"},
			"$DIR/a.yaml: line 4: field owner_name is not a known field of files"},
		{"unknown depends_on", map[string]string{"a.yaml": simple + "depends_on: [ghost]\n"},
			`$DIR/a.yaml: depends_on "ghost": no such configuration`},
		{"cycle", map[string]string{
			"a.yaml": "depends_on: [b]\nfiles:\n  - {path: /a, content: a}\n",
			"b.yaml": "depends_on: [c]\nfiles:\n  - {path: /b, content: b}\n",
			"c.yaml": "depends_on: [a]\nfiles:\n  - {path: /c, content: c}\n",
			"d.yaml": "depends_on: [d]\nfiles:\n  - {path: /d, content: d}\n",
		}, "$DIR/a.yaml, $DIR/b.yaml, $DIR/c.yaml, $DIR/d.yaml: dependency cycle: a -> b -> c -> a; d -> d"},
		{"missing template", map[string]string{"a.yaml": "files:\n  - path: /x\n    template: nope.tmpl\n"},
			"$DIR/a.yaml: files[0] /x: template $DIR/templates/nope.tmpl: no such file"},
		{"template escapes templates/", map[string]string{"a.yaml": "files:\n  - path: /x\n    template: ../a.yaml\n"},
			`$DIR/a.yaml: files[0] /x: template "../a.yaml" must be a relative path inside templates/`},
		{"template parse error", map[string]string{
			"a.yaml":           "files:\n  - path: /x\n    template: t.tmpl\n",
			"templates/t.tmpl": "line one\n{{ if .Object }}\n",
		}, "$DIR/a.yaml: files[0] /x: template: $DIR/templates/t.tmpl:3: unexpected EOF"},
		{"content parse error", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: '{{ .X '\n"},
			"$DIR/a.yaml: files[0] /x: content: template: content:1: unclosed action"},
		{"unknown function", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: '{{ envv \"HOME\" }}'\n"},
			`$DIR/a.yaml: files[0] /x: content: template: content:1: function "envv" not defined`},
		{"functions that are not deterministic, every call with its line", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: \"{{ now | date \\\"2006\\\" }}\\n{{ randAlphaNum 8 }} {{ getHostByName \\\"localhost\\\" }}\"\n"},
			"$DIR/a.yaml: files[0] /x: content: template: content:1:3: function \"now\" is not allowed: not deterministic: every node and every run would render different bytes (it reads the clock or the node's time zone); put the time in the object data\n" +
				"template: content:1:9: function \"date\" is not allowed: not deterministic: every node and every run would render different bytes (it reads the clock or the node's time zone); put the time in the object data\n" +
				"template: content:2:3: function \"randAlphaNum\" is not allowed: not deterministic: every node and every run would render different bytes (it is random); put the value in the object data\n" +
				"template: content:2:24: function \"getHostByName\" is not allowed: not deterministic: it asks DNS at render time, so nodes and runs can differ; put the address in the object data"},
		{"unquoted mode", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    mode: 0644\n"},
			"$DIR/a.yaml: line 4: mode 0644 must be a quoted octal string such as \"0644\""},
		{"bad mode", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    mode: \"0999\"\n"},
			`$DIR/a.yaml: files[0] /x: mode "0999" is not an octal permission between 0000 and 7777`},
		{"mode too large", map[string]string{"a.yaml": "directories:\n  - path: /d\n    mode: \"17777\"\n"},
			`$DIR/a.yaml: directories[0] /d: mode "17777" is not an octal permission between 0000 and 7777`},
		{"bad owner", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    owner: no-such-user-ccm\n"},
			`$DIR/a.yaml: files[0] /x: owner "no-such-user-ccm": no such user`},
		{"bad group", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    group: no-such-group-ccm\n"},
			`$DIR/a.yaml: files[0] /x: group "no-such-group-ccm": no such group`},
		{"relative path", map[string]string{"a.yaml": "files:\n  - path: etc/x\n    content: x\n"},
			"$DIR/a.yaml: files[0] etc/x: path must be absolute"},
		{"template and content", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    template: t\n"},
			"$DIR/a.yaml: files[0] /x: set either template or content, not both"},
		{"duplicate name", map[string]string{"a.yaml": "name: web\n" + simple, "b.yaml": "name: web\nfiles:\n  - {path: /y, content: y}\n"},
			`$DIR/b.yaml: configuration name "web" is already used by $DIR/a.yaml`},
		{"path claimed twice", map[string]string{"a.yaml": simple, "b.yaml": simple},
			`$DIR/b.yaml: file /etc/x is also written by configuration "a"`},
		{"object data in a command", map[string]string{"a.yaml": simple + "validate: [echo, '{{ .Object.ID }}']\n"},
			`$DIR/a.yaml: validate: argument "{{ .Object.ID }}": templates are not allowed here; object data never reaches a command line`},
		{"object data in a check", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    check: [cat, '{{ .Staged }}', '{{ .Object.Data.x }}']\n"},
			`$DIR/a.yaml: files[0] /x: check: argument "{{ .Object.Data.x }}": only {{ .Staged }} and {{ .Path }} may be used in a command; object data never reaches a command line`},
		{"a placeholder in check_all", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    check_all: [cat, '{{ .Staged }}']\n"},
			`$DIR/a.yaml: files[0] /x: check_all: argument "{{ .Staged }}": templates are not allowed here; object data never reaches a command line`},
		{"check and check_all", map[string]string{"a.yaml": "files:\n  - path: /x\n    content: x\n    check: [cat, '{{ .Staged }}']\n    check_all: [cat]\n"},
			`$DIR/a.yaml: files[0] /x: set either check or check_all, not both`},
		{"empty on_change", map[string]string{"a.yaml": simple + "on_change: [[]]\n"},
			"$DIR/a.yaml: on_change[0]: command is empty"},
		{"bad timeout", map[string]string{"a.yaml": simple + "timeout: soon\n"},
			`$DIR/a.yaml: timeout "soon" is not a positive duration such as 60s`},
		{"bad name", map[string]string{"a.yaml": "name: ../x\n" + simple},
			`$DIR/a.yaml: name "../x": must match [A-Za-z0-9][A-Za-z0-9._-]* and be at most 200 bytes`},
		{"nothing to do", map[string]string{"a.yaml": "subscribes: [x]\n"},
			"$DIR/a.yaml: configuration has no files, directories, users or groups"},
		{"accounts, every error at once", map[string]string{"a.yaml": "min_uid: 0\nusers:\n  - {name: Bad, shell: /bin/sh}\n  - {name: c, password: \"$6$x$y\"}\n  - {name: \"{{ .Object.ID }}\", for_each: sites, sheel: x}\ngroups:\n  - {name: \"\"}\n"},
			"$DIR/a.yaml: line 5: field sheel is not a known field of users\n" +
				"$DIR/a.yaml: min_uid 0: must be 1 or more (0 is root)\n" +
				"$DIR/a.yaml: groups[0] : name is empty\n" +
				"$DIR/a.yaml: users[0] Bad: name \"Bad\" is not an account name: want 1 to 32 of a-z, 0-9, _ and -, starting with a letter or _\n" +
				"$DIR/a.yaml: users[1] c: password must come from object data, as a template such as {{ .Object.Data.password_hash }}: a hash in the configuration would be in every checkout"},
		{"empty directory", map[string]string{"README": "x"}, "$DIR: no configuration (*.yaml) found"},
		{"commands whose programs do not exist", map[string]string{"a.yaml": "files:\n  - {path: /x, content: x, check: [/usr/lib/ccm/check/nope, \"{{ .Staged }}\"]}\n  - {path: /y, content: y, check: [./check/nope]}\nvalidate: [no-such-program-ccm]\non_change:\n  - [./README]\n", "README": "x"},
			"$DIR/a.yaml: validate: command \"no-such-program-ccm\": \"no-such-program-ccm\" is not on $PATH (" + os.Getenv("PATH") + ")\n" +
				"$DIR/a.yaml: on_change[0]: command \"./README\": $DIR/README is not an executable file\n" +
				"$DIR/a.yaml: files[0] /x: check: command \"/usr/lib/ccm/check/nope {{ .Staged }}\": /usr/lib/ccm/check/nope does not exist\n" +
				"$DIR/a.yaml: files[1] /y: check: command \"./check/nope\": $DIR/check/nope does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDir(t, tt.files)
			_, err := configs.Load(dir)
			assert.EqualError(t, err, strings.ReplaceAll(tt.want, "$DIR", dir))
		})
	}
}

func TestLoadReportsEveryError(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"a.yaml": simple + "timeout: soon\nvalidate: []\n",
		"b.yaml": "files:\n  - path: /b\n    template: missing.tmpl\n",
	})
	_, err := configs.Load(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a.yaml: timeout")
	assert.Contains(t, err.Error(), "a.yaml: validate: command is empty")
	assert.Contains(t, err.Error(), "b.yaml: files[0] /b: template")
}

func TestLoadExample(t *testing.T) {
	set, err := configs.Load("../../examples/ccm")
	require.NoError(t, err)
	assert.Equal(t, []string{"unix-users", "crontab", "php-fpm-pools", "nginx-vhosts"}, set.Order)

	nginx, ok := set.Get("nginx-vhosts")
	require.True(t, ok)
	assert.Equal(t, []string{"certificates", "sites"}, nginx.Types())
	assert.Equal(t, 60*time.Second, nginx.Timeout)
	assert.Equal(t, os.FileMode(0o644), nginx.Files[0].Mode)
	assert.Equal(t, "sites", nginx.Files[0].ForEach)
}

func TestDefaultsAndModes(t *testing.T) {
	dir := writeDir(t, map[string]string{"web.yaml": `
files:
  - path: /usr/local/bin/tool
    content: "#!/bin/sh\n"
    mode: "4755"
    owner: "0"
    group: root
directories:
  - path: /tmp/shared
    mode: "1777"
`})
	set, err := configs.Load(dir)
	require.NoError(t, err)
	c := set.Configs["web"]
	assert.Equal(t, "web", c.Name, "name defaults to the file name")
	assert.Equal(t, configs.DefaultTimeout, c.Timeout)
	assert.Equal(t, os.FileMode(0o755)|os.ModeSetuid, c.Files[0].Mode)
	assert.Equal(t, 0, *c.Files[0].UID)
	assert.Equal(t, 0, *c.Files[0].GID)
	assert.Equal(t, os.FileMode(0o777)|os.ModeSticky, c.Directories[0].Mode)
}

func TestMatches(t *testing.T) {
	c := &configs.Config{When: map[string]string{"role": "web"}}
	assert.True(t, c.Matches(map[string]string{"role": "web", "dc": "x"}))
	assert.False(t, c.Matches(map[string]string{"role": "db"}))
	assert.False(t, c.Matches(nil))
	assert.True(t, (&configs.Config{}).Matches(nil))
}

func TestCommandExpandOnlyReplacesPlaceholders(t *testing.T) {
	c := configs.Command{"nginx", "-t", "-c", "{{ .Staged }}", "--path={{.Path}}"}
	assert.Equal(t, []string{"nginx", "-t", "-c", "/tmp/s", "--path=/etc/x"}, c.Expand("/tmp/s", "/etc/x"))
}

func TestLoadReportsEveryErrorInOnePass(t *testing.T) {
	// The trial's directory: each error used to hide the next one.
	dir := writeDir(t, map[string]string{
		"a.yaml": "depends_on: [b]\nfiles:\n  - path: /x\n    content: x\n    mode: 0644\n    colour: red\nvalidate: [echo, '{{ .Object.ID }}']\n",
		"b.yaml": "depends_on: [a]\nfiles: [{path: /y, content: y}]\n",
		"c.yaml": "depends_on: [a]\nfiles: [{path: /z, content: z}]\n",
	})
	_, err := configs.Load(dir)
	require.Error(t, err)
	lines := strings.Split(strings.ReplaceAll(err.Error(), dir+"/", ""), "\n")
	assert.Equal(t, []string{
		`a.yaml: line 5: mode 0644 must be a quoted octal string such as "0644"`,
		`a.yaml: line 6: field colour is not a known field of files`,
		`a.yaml: validate: argument "{{ .Object.ID }}": templates are not allowed here; object data never reaches a command line`,
		`b.yaml: depends_on "a": that configuration has errors (a.yaml), so this one cannot run either`,
		`c.yaml: depends_on "a": that configuration has errors (a.yaml), so this one cannot run either`,
		`a.yaml, b.yaml: dependency cycle: a -> b -> a`,
	}, lines, "one error per line, all of them, each naming its file")
}
