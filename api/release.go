package api

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
)

// CheckReleaseID refuses anything but a full release id: 64 lowercase hex
// digits, the SHA-256 of the release's files.
func CheckReleaseID(id string) error {
	if len(id) != sha256.Size*2 || strings.Trim(id, "0123456789abcdef") != "" {
		return fmt.Errorf("release %q: want the full id, 64 hex digits", id)
	}
	return nil
}

// DecodeReleasePointer reads the value of the release pointer key (key
// names it in errors); a pointer whose id is not a full release id is an
// error.
func DecodeReleasePointer(key string, raw []byte) (*ReleasePointer, error) {
	p := &ReleasePointer{}
	if err := json.Unmarshal(raw, p); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if err := CheckReleaseID(p.ID); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return p, nil
}
