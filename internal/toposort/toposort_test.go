package toposort_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/toposort"
)

func TestSortOrdersDependenciesFirstAndBreaksTiesByName(t *testing.T) {
	deps := map[string][]string{
		"nginx":   {"users", "certs"},
		"crontab": {"users"},
		"users":   nil,
		"certs":   nil,
		"zzz":     nil,
	}
	for i := 0; i < 20; i++ { // map order must not leak into the result
		order, err := toposort.Sort(deps)
		require.NoError(t, err)
		assert.Equal(t, []string{"certs", "users", "crontab", "nginx", "zzz"}, order)
	}
}

func TestSortReportsEveryCycle(t *testing.T) {
	tests := []struct {
		name string
		deps map[string][]string
		want string
	}{
		{"self", map[string][]string{"a": {"a"}}, "dependency cycle: a -> a"},
		{"three", map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"a"}}, "dependency cycle: a -> b -> c -> a"},
		{"two disjoint", map[string][]string{"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": nil},
			"dependency cycle: a -> b -> a; c -> d -> c"},
		{"two through one node", map[string][]string{"a": {"b", "c"}, "b": {"a"}, "c": {"a"}},
			"dependency cycle: a -> b -> a; a -> c -> a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := toposort.Sort(tt.deps)
			var ce *toposort.CycleError
			require.ErrorAs(t, err, &ce)
			assert.EqualError(t, err, tt.want)
		})
	}
}

func TestSortRejectsUnknownDependency(t *testing.T) {
	_, err := toposort.Sort(map[string][]string{"a": {"ghost"}})
	assert.True(t, errors.Is(err, toposort.ErrUnknown))
	assert.EqualError(t, err, `a depends on "ghost": unknown node`)
}

func TestCyclesIsBounded(t *testing.T) {
	// A complete graph on 12 nodes has millions of elementary cycles.
	deps := map[string][]string{}
	for i := 0; i < 12; i++ {
		for j := 0; j < 12; j++ {
			if i != j {
				deps[fmt.Sprint(i)] = append(deps[fmt.Sprint(i)], fmt.Sprint(j))
			}
		}
	}
	assert.Len(t, toposort.Cycles(deps), toposort.MaxCycles)
}

func ExampleSort() {
	order, _ := toposort.Sort(map[string][]string{
		"crontab":     {"unix-users"},
		"unix-users":  nil,
		"nginx-vhost": {"unix-users"},
	})
	fmt.Println(order)
	// Output: [unix-users crontab nginx-vhost]
}
