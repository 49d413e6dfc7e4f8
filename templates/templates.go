// Package templates is the template language of configurations: Go
// text/template with the Sprig functions and missingkey=error.
//
// Sprig's env and expandenv are removed: a template renders the same bytes
// on every node from the same objects, and the agent's environment (which
// holds CCM_PASSWORD) never leaks into a file.
package templates

import (
	"fmt"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
)

// removed lists the Sprig functions that would make output depend on the
// process environment.
var removed = []string{"env", "expandenv"}

// Limits of the Sprig functions that allocate by a count, so that one
// object field cannot exhaust the agent's memory.
const (
	// MaxRepeat is the most bytes repeat may produce.
	MaxRepeat = 16 << 20
	// MaxSequence is the most elements until, untilStep and seq may
	// produce.
	MaxSequence = 1 << 20
)

// FuncMap returns the functions available to templates.
func FuncMap() template.FuncMap {
	fm := sprig.TxtFuncMap()
	for _, name := range removed {
		delete(fm, name)
	}
	bound(fm)
	return fm
}

// bound replaces the Sprig functions that allocate by a count with ones
// that refuse a count over the limits.
func bound(fm template.FuncMap) {
	until := fm["until"].(func(int) []int)
	untilStep := fm["untilStep"].(func(int, int, int) []int)
	seq := fm["seq"].(func(...int) string)
	fm["repeat"] = func(count int, str string) (string, error) {
		if count < 0 || (len(str) > 0 && count > MaxRepeat/len(str)) {
			return "", fmt.Errorf("repeat %d times %d bytes: over the limit of %d bytes", count, len(str), MaxRepeat)
		}
		return strings.Repeat(str, count), nil
	}
	fm["until"] = func(count int) ([]int, error) {
		if err := checkCount("until", int64(count)); err != nil {
			return nil, err
		}
		return until(count), nil
	}
	fm["untilStep"] = func(start, stop, step int) ([]int, error) {
		if err := checkCount("untilStep", steps(start, stop, step)); err != nil {
			return nil, err
		}
		return untilStep(start, stop, step), nil
	}
	fm["seq"] = func(params ...int) (string, error) {
		var n int64
		switch len(params) {
		case 1:
			n = steps(1, params[0], 1)
		case 2:
			n = steps(params[0], params[1], 1)
		case 3:
			n = steps(params[0], params[2], params[1])
		}
		if err := checkCount("seq", n); err != nil {
			return "", err
		}
		return seq(params...), nil
	}
}

// steps is how many elements a sequence from start to stop by step has, at
// most (its sign is not Sprig's business here).
func steps(start, stop, step int) int64 {
	if step == 0 {
		return 0
	}
	n := (int64(stop) - int64(start)) / int64(step)
	if n < 0 {
		n = -n
	}
	return n + 1
}

func checkCount(fn string, n int64) error {
	if n > MaxSequence {
		return fmt.Errorf("%s of %d elements: over the limit of %d", fn, n, MaxSequence)
	}
	return nil
}

// Parse parses text as a template named name, with the ccm functions and
// missingkey=error, so a typo in a field name fails instead of rendering
// "<no value>".
//
// Ranges whose body reads only its element are rewritten so that the
// renderer can cache each element's output (see Ranger); the output is
// the same.
func Parse(name, text string) (*template.Template, error) {
	t, err := template.New(name).Funcs(FuncMap()).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	if err := memoize(t); err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return t, nil
}
