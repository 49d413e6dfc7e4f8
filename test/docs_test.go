package test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// example is one command of a marked shell block of the docs and the
// output the docs show for it.
type example struct {
	line int // in the file, for the failure message
	args []string
	want string
}

// markedBlocks returns the examples of each block of file fenced as
// "```console test": lines "$ ccm ARGS" (arguments split at spaces, no
// quoting), each followed by its stdout up to the next "$ " line.
func markedBlocks(t *testing.T, file string) [][]example {
	t.Helper()
	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var blocks [][]example
	var cur []example
	in := false
	for i, line := range strings.Split(string(raw), "\n") {
		switch {
		case !in && line == "```console test":
			in, cur = true, nil
		case in && line == "```":
			in = false
			blocks = append(blocks, cur)
		case in && strings.HasPrefix(line, "$ "):
			fields := strings.Fields(strings.TrimPrefix(line, "$ "))
			require.Equal(t, "ccm", fields[0], "%s:%d: a marked block runs ccm only", file, i+1)
			cur = append(cur, example{line: i + 1, args: fields[1:]})
		case in:
			require.NotEmpty(t, cur, "%s:%d: output before any command", file, i+1)
			cur[len(cur)-1].want += line + "\n"
		}
	}
	require.False(t, in, "%s: a marked block is not closed", file)
	return blocks
}

// Each shell block of OPERATIONS and REFERENCE marked "console test" runs
// as written against a fresh etcd, and prints what the docs show.
func TestTheDocsMarkedExamplesRunAsShown(t *testing.T) {
	t.Parallel()
	n := 0
	for _, file := range []string{"../docs/OPERATIONS.md", "../docs/REFERENCE.md"} {
		for _, block := range markedBlocks(t, file) {
			etcd := etcdtest.New(t, 1)
			admin := caller(t, etcd, "../examples/ccm")
			for _, ex := range block {
				n++
				r := admin.run("", ex.args...)
				require.Equal(t, 0, r.code, "%s:%d: ccm %v: %s", file, ex.line, ex.args, r.stderr)
				assert.Equal(t, strings.TrimRight(ex.want, "\n"), strings.TrimRight(r.stdout, "\n"), "%s:%d: ccm %v", file, ex.line, ex.args)
			}
		}
	}
	assert.Greater(t, n, 2, "the docs have marked examples")
}
