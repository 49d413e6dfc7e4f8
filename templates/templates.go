// Package templates is the template language of configurations: Go
// text/template with the Sprig functions and missingkey=error.
//
// Sprig's env and expandenv are removed: a template renders the same bytes
// on every node from the same objects, and the agent's environment (which
// holds CCM_PASSWORD) never leaks into a file.
package templates

import (
	"text/template"

	"github.com/Masterminds/sprig/v3"
)

// removed lists the Sprig functions that would make output depend on the
// process environment.
var removed = []string{"env", "expandenv"}

// FuncMap returns the functions available to templates.
func FuncMap() template.FuncMap {
	fm := sprig.TxtFuncMap()
	for _, name := range removed {
		delete(fm, name)
	}
	return fm
}

// Parse parses text as a template named name, with the ccm functions and
// missingkey=error, so a typo in a field name fails instead of rendering
// "<no value>".
func Parse(name, text string) (*template.Template, error) {
	return template.New(name).Funcs(FuncMap()).Option("missingkey=error").Parse(text)
}
