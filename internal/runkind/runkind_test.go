package runkind_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/internal/runkind"
)

// A batch is a full run as soon as one of its parts asks for one; the
// zero value is the cheap run, so that a forgotten field never skips the
// check of the disk.
func TestAFullRunAbsorbsAChangedOne(t *testing.T) {
	assert.Equal(t, runkind.Full, runkind.Changed.With(runkind.Full))
	assert.Equal(t, runkind.Full, runkind.Full.With(runkind.Changed))
	assert.Equal(t, runkind.Changed, runkind.Changed.With(runkind.Changed))
	assert.Equal(t, "full", runkind.Full.String())
	assert.Equal(t, "changed", runkind.Kind(0).String())
}
