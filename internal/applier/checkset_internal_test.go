package applier

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// searched runs search on 0..n-1 with bad as the members a run refuses,
// and returns what it found and the runs it made, each with its verdict.
// A refused run's error names the bad members it was given.
func searched(n int, bad []int) ([]refusal, []checkRun) {
	isBad := make([]bool, n)
	for _, i := range bad {
		isBad[i] = true
	}
	var runs []checkRun
	found := search(n, func(idx []int) error {
		var in []int
		for _, i := range idx {
			if isBad[i] {
				in = append(in, i)
			}
		}
		runs = append(runs, checkRun{slices.Clone(idx), len(in) > 0})
		if len(in) > 0 {
			return fmt.Errorf("refused %v", in)
		}
		return nil
	})
	return found, runs
}

type checkRun struct {
	idx     []int
	refused bool
}

// requireProven fails unless the runs prove what search returned, read
// from the runs alone: every member kept was in a run that passed, and
// every member returned was in a refused run whose other members all
// passed elsewhere, and carries that run's error (which names it alone).
func requireProven(t *testing.T, n int, bad []int, found []refusal, runs []checkRun) {
	t.Helper()
	passed := make([]bool, n)
	for _, r := range runs {
		if !r.refused {
			for _, i := range r.idx {
				passed[i] = true
			}
		}
	}
	proven := make([]bool, n) // alone in a refused run but for members that passed
	for _, r := range runs {
		if !r.refused {
			continue
		}
		unproven := -1
		for _, i := range r.idx {
			if !passed[i] {
				if unproven >= 0 {
					unproven = -1
					break
				}
				unproven = i
			}
		}
		if unproven >= 0 {
			proven[unproven] = true
		}
	}
	refused := make([]bool, n)
	for _, f := range found {
		if refused[f.index] || passed[f.index] {
			t.Fatalf("bad %v: %d returned twice, or a run with it passed", bad, f.index)
		}
		refused[f.index] = true
		if !proven[f.index] {
			t.Fatalf("bad %v: %d returned without a refused run whose other members passed", bad, f.index)
		}
		if want := fmt.Sprintf("refused [%d]", f.index); f.err == nil || f.err.Error() != want {
			t.Fatalf("bad %v: %d returned with error %v, not that of a run that isolated it", bad, f.index, f.err)
		}
	}
	for i := range n {
		if !refused[i] && !passed[i] {
			t.Fatalf("bad %v: %d kept without a run that passed", bad, i)
		}
	}
	if len(found) != len(bad) {
		t.Fatalf("bad %v: found %v", bad, found)
	}
}

// log2 is ceil(log2(n)) for n >= 1.
func log2(n int) int { return bits.Len(uint(n - 1)) }

// A set the check accepts costs one run; one bad member among n costs at
// most ceil(log2(n))+2, for every n and every member.
func TestBisectCostsOneRunForNoBadMemberAndLog2Plus2ForOne(t *testing.T) {
	t.Parallel()
	for n := 1; n <= 130; n++ {
		found, runs := searched(n, nil)
		requireProven(t, n, nil, found, runs)
		require.Len(t, runs, 1, "n=%d, no bad member", n)
		worst := 0
		for b := range n {
			found, runs := searched(n, []int{b})
			requireProven(t, n, []int{b}, found, runs)
			worst = max(worst, len(runs))
		}
		require.LessOrEqual(t, worst, log2(n)+2, "n=%d, one bad member", n)
	}
}

// Two bad members among 64 cost at most 15 runs, counting the whole
// set's, for every one of the 2,016 pairs. 15 is the least any search
// needs that keeps one bad member within log2(64)+2 = 8 (see search):
// the test pins the worst case so a change that trades one for the other
// is seen.
func TestBisectFindsTwoBadSitesOf64InAtMost15Runs(t *testing.T) {
	t.Parallel()
	worst, at15 := 0, 0
	for a := range 64 {
		for b := a + 1; b < 64; b++ {
			found, runs := searched(64, []int{a, b})
			requireProven(t, 64, []int{a, b}, found, runs)
			worst = max(worst, len(runs))
			if len(runs) == 15 {
				at15++
			}
		}
	}
	assert.Equal(t, 15, worst, "2·log2(64)+3")
	t.Logf("two bad of 64: worst %d runs, for %d of 2016 pairs", worst, at15)
	for _, n := range []int{2, 3, 5, 8, 16, 17, 32, 33, 100} {
		worst := 0
		for a := range n {
			for b := a + 1; b < n; b++ {
				found, runs := searched(n, []int{a, b})
				requireProven(t, n, []int{a, b}, found, runs)
				worst = max(worst, len(runs))
			}
		}
		assert.LessOrEqual(t, worst, 2*(log2(n)+1)+1, "n=%d, two bad members", n)
	}
}

// Nothing is assumed about how many members are bad: for three of 64 (a
// worst case and 4,000 drawn) and for random sets of 1 to all n members,
// search returns exactly the bad ones, each proven by its runs, in at
// most k·(ceil(log2(n))+1)+1 runs for k bad.
func TestBisectProvesEveryVerdictForAnyNumberOfBadMembers(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(36, 64))
	worst := 0
	for i := range 4000 {
		bad := []int{0, 1, 33} // one of the 7,208 triples that cost 22
		if i > 0 {
			bad = rng.Perm(64)[:3]
			slices.Sort(bad)
		}
		found, runs := searched(64, bad)
		requireProven(t, 64, bad, found, runs)
		worst = max(worst, len(runs))
	}
	assert.Equal(t, 3*(log2(64)+1)+1, worst, "three bad of 64")
	for range 500 {
		n := 1 + rng.IntN(100)
		bad := rng.Perm(n)[:1+rng.IntN(n)]
		slices.Sort(bad)
		found, runs := searched(n, bad)
		requireProven(t, n, bad, found, runs)
		require.LessOrEqual(t, len(runs), len(bad)*(log2(n)+1)+1, "n=%d, bad %v", n, bad)
	}
}

// A run that fails for a reason other than a member (the check cannot
// start) refuses every member, each with that error: nothing is kept
// that no run accepted.
func TestBisectRefusesEveryMemberWhenEveryRunFails(t *testing.T) {
	t.Parallel()
	boom := errors.New("no such file")
	runs := 0
	found := search(8, func([]int) error { runs++; return boom })
	require.Len(t, found, 8)
	for _, f := range found {
		assert.ErrorIs(t, f.err, boom)
	}
	assert.LessOrEqual(t, runs, 8*(log2(8)+1)+1)
}
