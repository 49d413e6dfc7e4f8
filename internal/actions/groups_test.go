package actions

import (
	"os/user"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A group in deny_groups refuses its members by its name, whatever its
// number: adm (gid 4 on Debian) is above a min_gid of 1 and still
// refused, and only because it is named.
func TestADeniedGroupRefusesByName(t *testing.T) {
	t.Parallel()
	g, err := user.LookupGroup("adm")
	if err != nil {
		t.Skip("no group adm on this machine")
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	require.NoError(t, err)
	require.GreaterOrEqual(t, gid, uint64(1))

	err = RunAs{MinGID: 1, DenyGroups: []string{"adm"}}.checkGroups("alice", []uint32{uint32(gid)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `run_as: user "alice"`)
	assert.Contains(t, err.Error(), "adm")
	assert.NoError(t, RunAs{MinGID: 1, DenyGroups: []string{"sudo"}}.checkGroups("alice", []uint32{uint32(gid)}),
		"not named, and above min_gid: allowed")
}
