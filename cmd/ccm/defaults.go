package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// defaultsFile holds a node's settings as CCM_* variables: the package
// installs it, and systemd reads it for the agent (EnvironmentFile=).
// CCM_DEFAULTS_FILE names another file, or none when empty.
const defaultsFile = "/etc/default/ccm"

// settings are the CCM_* variables a command sees: its environment, over
// those of the defaults file, so that on a node ccm status or ccm apply
// --once reach the same etcd, as the same node, as the agent does. Flags
// override both.
type settings struct {
	file map[string]string
	path string // the defaults file read ("" for none)
	// unreadable is set when the defaults file exists but this user may
	// not read it: it may name release keys this command cannot see.
	unreadable bool
}

// loadSettings reads the defaults file when it exists and is readable (an
// operator without root reads none); a line it cannot parse is an error
// naming the file and the line.
func loadSettings() (settings, error) {
	path, ok := os.LookupEnv("CCM_DEFAULTS_FILE")
	if !ok {
		path = defaultsFile
	}
	s := settings{file: map[string]string{}, path: path}
	if path == "" {
		return s, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if errors.Is(err, fs.ErrPermission) {
		s.unreadable = true
		return s, nil
	}
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			return s, fmt.Errorf("%s:%d: want NAME=VALUE, as systemd's EnvironmentFile= reads it", path, n)
		}
		s.file[k] = unquote(strings.TrimSpace(v))
	}
	return s, sc.Err()
}

// unquote removes one pair of matching quotes, as systemd does.
func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// lookup returns the variable from the environment, or else from the
// defaults file.
func (s settings) lookup(name string) (string, bool) {
	if v, ok := os.LookupEnv(name); ok {
		return v, true
	}
	v, ok := s.file[name]
	return v, ok
}
