// Package eventbus routes changed object types to the configurations that
// subscribe to them.
//
// Configurations subscribe to object types (subscribes: and for_each:).
// Publishing a flush of changed types yields the set of configurations to
// run, sorted by name; the caller orders them topologically. A Bus is
// immutable: a reload builds a new one with its configuration set, and the
// two are swapped together, so a run never sees a bus and a set that
// disagree.
package eventbus

import (
	"sort"
)

// Bus maps object types to subscribed configurations. It is immutable and
// so safe for concurrent use.
type Bus struct {
	subs map[string]map[string]bool // type -> configurations
}

// New returns a Bus for subscriptions, a map from configuration name to
// the object types it reads.
func New(subscriptions map[string][]string) *Bus {
	subs := map[string]map[string]bool{}
	for config, types := range subscriptions {
		for _, t := range types {
			if subs[t] == nil {
				subs[t] = map[string]bool{}
			}
			subs[t][config] = true
		}
	}
	return &Bus{subs: subs}
}

// Publish returns the configurations subscribed to any of types, sorted.
func (b *Bus) Publish(types ...string) []string {
	set := map[string]bool{}
	for _, t := range types {
		for c := range b.subs[t] {
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
