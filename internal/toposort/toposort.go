// Package toposort orders configurations so that every configuration runs
// after the ones it depends on.
//
// The order is deterministic: among the nodes whose dependencies are done,
// the smallest name comes first. A graph with cycles is rejected with a
// CycleError that lists every elementary cycle, not only the first one found.
package toposort

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// MaxCycles bounds how many cycles a CycleError lists; a dense graph can have
// exponentially many.
const MaxCycles = 50

// ErrUnknown is returned when an edge names a node that is not in the graph.
var ErrUnknown = errors.New("unknown node")

// CycleError reports the cycles of a graph. Each cycle starts at its smallest
// node and ends where it started: [a b c a].
type CycleError struct {
	Cycles [][]string
}

// Error formats every cycle as "a -> b -> a".
func (e *CycleError) Error() string {
	parts := make([]string, len(e.Cycles))
	for i, c := range e.Cycles {
		parts[i] = strings.Join(c, " -> ")
	}
	return "dependency cycle: " + strings.Join(parts, "; ")
}

// Sort returns the nodes of deps in dependency order. deps maps each node to
// the nodes it depends on; every node must be a key of deps.
func Sort(deps map[string][]string) ([]string, error) {
	names := sortedKeys(deps)
	for _, n := range names {
		for _, d := range deps[n] {
			if _, ok := deps[d]; !ok {
				return nil, fmt.Errorf("%s depends on %q: %w", n, d, ErrUnknown)
			}
		}
	}
	if cycles := Cycles(deps); len(cycles) > 0 {
		return nil, &CycleError{Cycles: cycles}
	}
	indegree := make(map[string]int, len(deps))
	dependents := make(map[string][]string, len(deps))
	for _, n := range names {
		for _, d := range unique(deps[n]) {
			indegree[n]++
			dependents[d] = append(dependents[d], n)
		}
	}
	var ready, order []string
	for _, n := range names {
		if indegree[n] == 0 {
			ready = append(ready, n)
		}
	}
	for len(ready) > 0 {
		sort.Strings(ready)
		n := ready[0]
		ready = ready[1:]
		order = append(order, n)
		for _, m := range dependents[n] {
			if indegree[m]--; indegree[m] == 0 {
				ready = append(ready, m)
			}
		}
	}
	return order, nil
}

// Cycles returns the elementary cycles of the graph (up to MaxCycles), each
// starting and ending at its smallest node, sorted. Edges to unknown nodes
// are ignored.
func Cycles(deps map[string][]string) [][]string {
	names := sortedKeys(deps)
	var cycles [][]string
	// For each start node s, search only nodes greater than s: a cycle is
	// found exactly once, from its smallest node.
	for _, s := range names {
		onPath := map[string]bool{s: true}
		path := []string{s}
		var visit func(n string)
		visit = func(n string) {
			for _, d := range sortedUnique(deps[n]) {
				if len(cycles) >= MaxCycles {
					return
				}
				if d == s {
					c := append(append([]string{}, path...), s)
					cycles = append(cycles, c)
					continue
				}
				if _, ok := deps[d]; !ok || d < s || onPath[d] {
					continue
				}
				onPath[d] = true
				path = append(path, d)
				visit(d)
				path = path[:len(path)-1]
				onPath[d] = false
			}
		}
		visit(s)
	}
	return cycles
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func unique(l []string) []string {
	seen := make(map[string]bool, len(l))
	out := l[:0:0]
	for _, s := range l {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func sortedUnique(l []string) []string {
	out := unique(l)
	sort.Strings(out)
	return out
}
