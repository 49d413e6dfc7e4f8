package applier

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/ccm-dev/ccm/internal/configs"
)

// maxCheckArgs bounds the bytes of staged paths one check_all run is
// given; a larger set is checked in parts, well below the kernel's
// ARG_MAX.
const maxCheckArgs = 256 << 10

// stagedFile is one staged copy to check: p.Changes[change], whose copy
// is at path (absolute).
type stagedFile struct {
	change int
	path   string
}

// checkStaged runs the checks of the staged files of p (staged maps a
// change index to its absolute staged path) and returns the error of each
// change whose check refuses it.
//
// A file entry with check_all is checked as a whole set in one process;
// a refused set is bisected (see bisect for what it costs). A per-file
// check runs on the pool of Options.CheckWorkers. Either way a file is
// refused exactly when it would be on its own, for a check whose verdict
// on a set is the conjunction of its verdicts on each file (nginx -t,
// php-fpm -t on files that do not interact).
func (a *Applier) checkStaged(ctx context.Context, p *Plan, staged map[int]string) map[int]error {
	sets := map[string][]stagedFile{} // check_all argv -> its files
	var single []stagedFile
	for _, i := range slices.Sorted(maps.Keys(staged)) {
		f := p.Changes[i].file
		switch {
		case f == nil:
		case f.CheckAll != nil:
			k := strings.Join(f.CheckAll, "\x00")
			sets[k] = append(sets[k], stagedFile{i, staged[i]})
		case f.Check != nil:
			single = append(single, stagedFile{i, staged[i]})
		}
	}
	failed := map[int]error{}
	var mu sync.Mutex
	record := func(i int, err error) {
		mu.Lock()
		defer mu.Unlock()
		failed[i] = err
	}
	a.pool(len(single), func(j int) {
		s := single[j]
		if err := a.runCheck(ctx, p, &p.Changes[s.change], s.path); err != nil {
			record(s.change, err)
		}
	})
	for _, k := range slices.Sorted(maps.Keys(sets)) {
		argv := configs.Command(strings.Split(k, "\x00"))
		for _, part := range argParts(sets[k]) {
			a.bisect(ctx, p, argv, part, record)
		}
	}
	return failed
}

// bisect records the files of set that argv refuses, found by search
// (see there for what it costs), each with the error of the run that
// isolated it.
func (a *Applier) bisect(ctx context.Context, p *Plan, argv configs.Command, set []stagedFile, record func(int, error)) {
	for _, r := range search(len(set), func(idx []int) error {
		part := make([]stagedFile, len(idx))
		for j, i := range idx {
			part[j] = set[i]
		}
		return a.runCheckAll(ctx, p, argv, part)
	}) {
		s := set[r.index]
		record(s.change, fmt.Errorf("check %s: %w", p.Changes[s.change].Path, r.err))
	}
}

// refusal is a member search proved bad, with the error of the run that
// proved it.
type refusal struct {
	index int
	err   error
}

// search returns the members of 0..n-1 that run refuses, for a run whose
// verdict on a set is the conjunction of its verdicts on each member.
// Each is returned with the error of a refused run whose other members
// all passed in other runs, so that error is about it alone; every member
// not returned was in a run that passed. Nothing is assumed about how
// many are bad: the proof is in the runs.
//
// Each round checks what is left in one run; a refused set is searched
// by halves for one culprit, and a half is known to be refused without a
// run when its sibling passed. The halves not searched (the sibling of a
// refused half) are left to the next round's one run. No bad member costs
// 1 run, one bad member among n at most ceil(log2(n))+2, k bad members at
// most k·(ceil(log2(n))+1)+1 (two among 64: 15, for 961 of the 2,016
// pairs; three: 22).
//
// For n a power of two from 4 no search does better on two bad members without
// giving up that bound on one. Keeping each of the n single culprits
// within log2(n)+2 runs leaves no slack: a search's last run passes (were
// it refused, the runs before had proven everything), and log2(n)+1 runs
// after the whole set's end with a passing run in at most n ways. So some
// member x is isolated by log2(n) refused runs that all hold it, which
// prove nothing else good; x's next run must pass and hold the n-1 others.
// When a second culprit among them refuses it, finding which of n-1 and
// ending on a passing run takes ceil(log2(n-1))+1 more: 2·log2(n)+3 in
// all, 15 for 64. (A search that finds two of 64 in 14 exists; it costs
// one bad member 10 runs and three 26.)
func search(n int, run func(idx []int) error) []refusal {
	var found []refusal
	set := make([]int, n)
	for i := range set {
		set[i] = i
	}
	for len(set) > 0 {
		err := run(set)
		if err == nil {
			return found
		}
		var rest []int
		for len(set) > 1 {
			left, right := set[:len(set)/2], set[len(set)/2:]
			lerr := run(left)
			if lerr == nil { // a culprit is on the right
				set = right
				continue
			}
			rest = append(rest, right...)
			set, err = left, lerr
		}
		found = append(found, refusal{set[0], err})
		set = rest
	}
	return found
}

// runCheckAll runs a whole-set check on set. Its error shows the
// configured argv and how many files it was given, and names the final
// paths in the output, never the staged copies.
func (a *Applier) runCheckAll(ctx context.Context, p *Plan, argv configs.Command, set []stagedFile) error {
	args := slices.Clone([]string(argv))
	var rename []string
	for _, s := range set {
		args = append(args, s.path)
		rename = append(rename, s.path, p.Changes[s.change].Real)
	}
	show := append(slices.Clone([]string(argv)), fmt.Sprintf("(%d files)", len(set)))
	return a.runCommand(ctx, command{config: p.Config.Name, dir: p.Config.Dir(), argv: args, show: show, timeout: p.Config.Timeout, rename: rename})
}

// argParts splits set so that each part's paths fit in maxCheckArgs.
func argParts(set []stagedFile) [][]stagedFile {
	var parts [][]stagedFile
	start, size := 0, 0
	for i, s := range set {
		if size+len(s.path)+1 > maxCheckArgs && i > start {
			parts = append(parts, set[start:i])
			start, size = i, 0
		}
		size += len(s.path) + 1
	}
	return append(parts, set[start:])
}

// pool runs fn(0..n-1) on at most Options.CheckWorkers goroutines (the
// number of CPUs when 0), and returns when every call has.
func (a *Applier) pool(n int, fn func(int)) {
	workers := a.opts.CheckWorkers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	workers = min(workers, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for j := range next {
				fn(j)
			}
		})
	}
	for j := range n {
		next <- j
	}
	close(next)
	wg.Wait()
}
