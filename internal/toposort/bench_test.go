package toposort_test

import (
	"fmt"
	"testing"

	"github.com/ccm-dev/ccm/internal/toposort"
)

// BenchmarkSort orders 500 configurations, each depending on up to three
// earlier ones.
func BenchmarkSort(b *testing.B) {
	deps := map[string][]string{}
	for i := 0; i < 500; i++ {
		name := fmt.Sprintf("c%03d", i)
		deps[name] = nil
		for _, d := range []int{i - 1, i - 7, i - 31} {
			if d >= 0 {
				deps[name] = append(deps[name], fmt.Sprintf("c%03d", d))
			}
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := toposort.Sort(deps); err != nil {
			b.Fatal(err)
		}
	}
}
