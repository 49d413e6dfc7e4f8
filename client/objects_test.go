package client

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Objects go in transactions within etcd's limits: the count of
// operations and the request size, in order; an object too large for a
// shared transaction goes alone.
func TestObjectBatchesStayWithinEtcdsLimits(t *testing.T) {
	small := make([]string, 300)
	for i := range small {
		small[i] = "{}"
	}
	got := batches(small)
	assert.Len(t, got, 3)
	assert.Len(t, got[0], 128)
	assert.Len(t, got[2], 300-256)
	assert.Equal(t, 0, got[0][0])
	assert.Equal(t, 299, got[2][len(got[2])-1])

	half := strings.Repeat("x", MaxBatchBytes/2)
	huge := strings.Repeat("x", MaxBatchBytes*3)
	assert.Equal(t, [][]int{{0, 1}, {2}, {3}, {4}}, batches([]string{half, half, "{}", huge, half}))
	assert.Empty(t, batches(nil))
}
