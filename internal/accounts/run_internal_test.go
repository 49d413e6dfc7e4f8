package accounts

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The line a hash reaches chpasswd on is built from the parsed name and
// hash only; a value that would split it is refused there too, and no tool
// runs for it.
func TestAPasswordLineRefusesWhatWouldSplitIt(t *testing.T) {
	for _, c := range []Change{
		{Name: "a", Line: "~ user a: password set", hash: "$6$salt$abc\nroot:$6$salt$PWNED"},
		{Name: "a", Line: "~ user a: password set", hash: "$6$salt$abc:0:99999"},
		{Name: "a", Line: "~ user a: password set", hash: "plaintext"},
		{Name: "root\nx", Line: "~ user ?: password set", hash: "$6$salt$abc"},
	} {
		_, err := passwordLine(c)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "PWNED", "a hash is never echoed")
		r := &Runner{}
		r.queued = []Change{c}
		res := r.Flush(t.Context(), nil)
		require.Len(t, res, 1)
		assert.Error(t, res[0].Err)
		assert.Empty(t, r.Ran, "no tool ran")
	}
	line, err := passwordLine(Change{Name: "a", hash: "$6$salt$abc"})
	require.NoError(t, err)
	assert.Equal(t, "a:$6$salt$abc\n", line)
}

// Only a line chpasswd names, within the input, is blamed; anything else
// sends every line to run alone.
func TestRefusedLinesTrustsOnlyLinesOfTheInput(t *testing.T) {
	for _, tc := range []struct {
		out  string
		n    int
		want map[int]string
	}{
		{"chpasswd: line 2: user 'zz' does not exist\nchpasswd: error detected, changes ignored", 3, map[int]string{2: "user 'zz' does not exist"}},
		{"chpasswd: line 1: a\nchpasswd: line 3: b", 3, map[int]string{1: "a", 3: "b"}},
		{"chpasswd: cannot lock /etc/shadow; try again later.", 3, map[int]string{}},
		{"chpasswd: line 4: user 'zz' does not exist", 3, nil},
		{"chpasswd: line 0: ?", 3, nil},
	} {
		assert.Equal(t, tc.want, refusedLines(tc.out, tc.n), tc.out)
	}
}
