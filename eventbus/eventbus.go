// Package eventbus routes changed object types to the configurations that
// subscribe to them.
//
// Configurations subscribe to object types (subscribes: and for_each:).
// Publishing a flush of changed types yields the set of configurations to
// run, sorted by name; the caller orders them topologically. The bus is
// safe for concurrent use, and Replace swaps every subscription at once, so
// a reload of the configuration directory never leaves a half-built bus.
package eventbus

import (
	"sort"
	"sync"
)

// Bus maps object types to subscribed configurations.
type Bus struct {
	mu   sync.RWMutex
	subs map[string]map[string]bool // type -> configurations
	all  []string
}

// New returns an empty Bus.
func New() *Bus {
	return &Bus{subs: map[string]map[string]bool{}}
}

// Replace sets every subscription: configuration name -> its types.
func (b *Bus) Replace(subscriptions map[string][]string) {
	subs := map[string]map[string]bool{}
	all := make([]string, 0, len(subscriptions))
	for config, types := range subscriptions {
		all = append(all, config)
		for _, t := range types {
			if subs[t] == nil {
				subs[t] = map[string]bool{}
			}
			subs[t][config] = true
		}
	}
	sort.Strings(all)
	b.mu.Lock()
	b.subs, b.all = subs, all
	b.mu.Unlock()
}

// Publish returns the configurations subscribed to any of types, sorted.
func (b *Bus) Publish(types ...string) []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
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

// All returns every configuration, sorted.
func (b *Bus) All() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return append([]string(nil), b.all...)
}
