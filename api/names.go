package api

import (
	"errors"
	"fmt"
	"regexp"
)

// namePattern is the grammar of object types and IDs, and of node names.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// MaxNameLen bounds types and IDs so that an ID used as a file name always
// fits in one path component.
const MaxNameLen = 200

// ErrBadName is returned for a type or ID outside the key grammar.
var ErrBadName = errors.New("must match [A-Za-z0-9][A-Za-z0-9._-]* and be at most 200 bytes")

// ValidName reports whether s is a valid object type or ID.
func ValidName(s string) bool {
	return len(s) <= MaxNameLen && namePattern.MatchString(s)
}

// CheckName returns an error naming what if s is not a valid type or ID.
func CheckName(what, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%s %q: %w", what, s, ErrBadName)
	}
	return nil
}
