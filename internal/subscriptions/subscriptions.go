// Package subscriptions maps changed object types to the configurations
// that read them.
//
// Configurations subscribe to object types (subscribes: and for_each:).
// Looking up a flush of changed types yields the set of configurations to
// run, sorted by name; the caller orders them topologically. An Index is
// immutable: a reload builds a new one with its configuration set, and the
// two are swapped together, so a run never sees an index and a set that
// disagree.
package subscriptions

import (
	"sort"
)

// Index maps object types to subscribed configurations. It is immutable
// and so safe for concurrent use.
type Index struct {
	subs map[string]map[string]bool // type -> configurations
}

// New returns an Index for subscriptions, a map from configuration name to
// the object types it reads.
func New(subscriptions map[string][]string) *Index {
	subs := map[string]map[string]bool{}
	for config, types := range subscriptions {
		for _, t := range types {
			if subs[t] == nil {
				subs[t] = map[string]bool{}
			}
			subs[t][config] = true
		}
	}
	return &Index{subs: subs}
}

// Subscribers returns the configurations subscribed to any of types,
// sorted by name.
func (x *Index) Subscribers(types ...string) []string {
	set := map[string]bool{}
	for _, t := range types {
		for c := range x.subs[t] {
			set[c] = true
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}
