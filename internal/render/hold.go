package render

import (
	"maps"
	"slices"

	"github.com/ccm-dev/ccm/internal/accounts"
)

// HoldBack leaves out an object that another configuration of the same
// run held: like Drop, everything it renders is left out and its files
// stay as they are, but it is not one of this output's failures (the
// configuration that found it records the quarantine).
func (o *Output) HoldBack(object string) {
	o.hold(object)
	var has map[string]bool // a copy: the set may be another output's too
	for i := range o.Files {
		if o.Files[i].Object != object {
			continue
		}
		if has == nil {
			if has = map[string]bool{}; o.paths != nil {
				has = maps.Clone(o.paths.has)
			}
			o.paths = &fileSet{has: has}
		}
		delete(has, o.Files[i].Path)
	}
	o.Users = slices.DeleteFunc(o.Users, func(x accounts.User) bool { return x.Object == object })
	o.Groups = slices.DeleteFunc(o.Groups, func(x accounts.Group) bool { return x.Object == object })
}
