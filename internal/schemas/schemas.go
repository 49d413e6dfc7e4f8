// Package schemas checks objects against JSON Schemas:
// <config-dir>/schemas/<type>.json (JSON Schema 2020-12) describes the
// objects of one type. The CLI refuses an object that breaks its schema,
// and an agent reports such an object by key and field.
package schemas

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

	"github.com/ccm-dev/ccm/api"
)

// Set is the compiled schemas of a configuration directory, by type. A
// nil Set has no schema and accepts everything.
type Set struct {
	Dir    string
	byType map[string]*jsonschema.Schema
}

// Dir is the schemas directory of a configuration directory.
func Dir(configDir string) string { return filepath.Join(configDir, "schemas") }

// Load compiles every <configDir>/schemas/<type>.json and returns every
// error at once, each naming its file. A missing directory is an empty set.
func Load(configDir string) (*Set, error) {
	s := &Set{Dir: Dir(configDir), byType: map[string]*jsonschema.Schema{}}
	paths, err := filepath.Glob(filepath.Join(s.Dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	c := jsonschema.NewCompiler()
	abs, err := filepath.Abs(s.Dir)
	if err != nil {
		return nil, err
	}
	c.UseLoader(dirLoader{dir: abs})
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	var errs []error
	for _, p := range paths {
		typ := strings.TrimSuffix(filepath.Base(p), ".json")
		if err := api.CheckName("schema type", typ); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err == nil {
			err = c.AddResource(p, doc)
		}
		var sch *jsonschema.Schema
		if err == nil {
			sch, err = c.Compile(p)
		}
		if err == nil {
			// A $ref that refers to itself compiles, and then fails every
			// object with nothing but "validation failed".
			var ve *jsonschema.ValidationError
			if errors.As(sch.Validate(map[string]any{}), &ve) {
				err = cycle(ve)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s", p, strings.ReplaceAll(err.Error(), "\n", "; ")))
			continue
		}
		s.byType[typ] = sch
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Types returns the types that have a schema, sorted.
func (s *Set) Types() []string {
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.byType))
	for t := range s.byType {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Validate checks one object of type typ. The error names every field that
// breaks the schema by its JSON pointer, one per line.
func (s *Set) Validate(typ string, data map[string]any) error {
	if s == nil {
		return nil
	}
	sch, ok := s.byType[typ]
	if !ok {
		return nil
	}
	err := sch.Validate(data)
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	if c := cycle(ve); c != nil {
		return fmt.Errorf("schemas/%s.json cannot validate: %w", typ, c)
	}
	var lines []string
	var walk func(u *jsonschema.OutputUnit)
	walk = func(u *jsonschema.OutputUnit) {
		if len(u.Errors) == 0 && u.Error != nil {
			at := u.InstanceLocation
			if at == "" {
				at = "/"
			}
			lines = append(lines, fmt.Sprintf("%s: %s", at, u.Error))
		}
		for i := range u.Errors {
			walk(&u.Errors[i])
		}
	}
	walk(ve.BasicOutput())
	sort.Strings(lines)
	return fmt.Errorf("breaks schemas/%s.json at %s", typ, strings.Join(lines, "; at "))
}

// cycle returns the reference cycle that made a validation fail, or nil.
func cycle(ve *jsonschema.ValidationError) error {
	if _, ok := ve.ErrorKind.(*kind.Reference); ok {
		return fmt.Errorf("a $ref cycle (%s)", strings.TrimSpace(strings.TrimPrefix(ve.Error(), "at '':")))
	}
	for _, c := range ve.Causes {
		if err := cycle(c); err != nil {
			return err
		}
	}
	return nil
}

// maxSchemaBytes is the largest schema file a $ref loads.
const maxSchemaBytes = 1 << 20

// dirLoader loads what a schema's $ref names only from the schemas
// directory itself: a <type>.json beside it, a regular file of at most
// maxSchemaBytes. Anything else (another file, a device, http) is refused:
// a schema comes from a release, and what it names must be in it.
type dirLoader struct{ dir string }

// Load loads the schema at url.
func (l dirLoader) Load(url string) (any, error) {
	p, err := jsonschema.FileLoader{}.ToFile(url)
	if err != nil {
		return nil, fmt.Errorf("$ref %s: refused: a schema refers only to schemas/<type>.json beside it", url)
	}
	if filepath.Dir(p) != l.dir || filepath.Ext(p) != ".json" {
		return nil, fmt.Errorf("$ref %s: refused: outside %s, and a schema refers only to schemas/<type>.json beside it", url, l.dir)
	}
	info, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() || info.Size() > maxSchemaBytes {
		return nil, fmt.Errorf("$ref %s: refused: not a regular file of at most %d bytes", url, maxSchemaBytes)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return jsonschema.UnmarshalJSON(io.LimitReader(f, maxSchemaBytes))
}
