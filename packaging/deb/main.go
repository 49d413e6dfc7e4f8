// Command deb builds the Debian package of the ccm node agent from
// packaging/nfpm.yaml with nfpm, and prints the package's path.
//
//	go -C packaging/deb build -o ../../bin/ccm-deb . && bin/ccm-deb -bin bin/ccm-agent -version 1.2.3 -out .
//
// Run it from the repository root (make deb does).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
)

func main() {
	bin := flag.String("bin", "bin/ccm-agent", "the ccm binary to package")
	version := flag.String("version", "", "the package version (Debian syntax)")
	out := flag.String("out", ".", "the directory to write the package to")
	config := flag.String("config", "packaging/nfpm.yaml", "the nfpm configuration")
	flag.Parse()
	path, err := build(*config, *bin, *version, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deb:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

func build(config, bin, version, out string) (string, error) {
	if version == "" {
		return "", errors.New("-version is required")
	}
	raw, err := os.ReadFile(config)
	if err != nil {
		return "", err
	}
	// nfpm expands variables in some fields only; the file's are expanded
	// everywhere, before parsing.
	vars := map[string]string{"CCM_BIN": bin, "CCM_VERSION": version, "CCM_ARCH": runtime.GOARCH}
	expand := func(name string) string { return vars[name] }
	cfg, err := nfpm.ParseWithEnvMapping(strings.NewReader(os.Expand(string(raw), expand)), expand)
	if err != nil {
		return "", fmt.Errorf("%s: %w", config, err)
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", fmt.Errorf("%s: %w", config, err)
	}
	path := filepath.Join(out, deb.Default.ConventionalFileName(info))
	w, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, w); err != nil {
		w.Close()
		os.Remove(path)
		return "", err
	}
	return path, w.Close()
}
