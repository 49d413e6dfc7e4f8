package render

import (
	"fmt"
	"strings"

	"github.com/ccm-dev/ccm/internal/accounts"
	"github.com/ccm-dev/ccm/internal/configs"
	"github.com/ccm-dev/ccm/internal/templates"
)

// text renders one templated field; a nil template is "".
func (r *renderer) text(t *templates.Template, data Data, what string) (string, error) {
	if t == nil {
		return "", nil
	}
	buf := r.budget.writer(fmt.Sprintf("render %s%s", what, objectSuffix(data)))
	if err := t.Execute(buf, data); err != nil {
		return "", fmt.Errorf("render %s%s: %w", what, objectSuffix(data), templates.CleanError(err))
	}
	return strings.TrimSpace(buf.String()), nil
}

// accountFields renders the fields of one account into the strings they
// point at. The values are object data, untrusted: accounts.DB.Plan parses
// every one of them (the typed boundary), here nothing is checked.
func (r *renderer) accountFields(data Data, kind string, fields map[*string]*templates.Template, order ...*string) error {
	for _, p := range order {
		v, err := r.text(fields[p], data, kind+" field")
		if err != nil {
			return err
		}
		*p = v
	}
	return nil
}

// names renders a list of account names; nil for no list.
func (r *renderer) names(ts []*templates.Template, data Data, what string) ([]string, error) {
	if ts == nil {
		return nil, nil
	}
	out := []string{}
	for _, t := range ts {
		v, err := r.text(t, data, what)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// accounts renders the groups and users of cfg into out.
func (r *renderer) accounts(cfg *configs.Config, data Data, out *Output) error {
	for _, g := range cfg.Groups {
		err := each(g.ForEach, data, out, func(data Data) error {
			grp := accounts.Group{Object: ref(data)}
			err := r.accountFields(data, "group", map[*string]*templates.Template{&grp.Name: g.Name, &grp.GID: g.GID}, &grp.Name, &grp.GID)
			if err == nil {
				grp.Members, err = r.names(g.Members, data, "group member")
			}
			if err == nil {
				out.Groups = append(out.Groups, grp)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	for _, u := range cfg.Users {
		err := each(u.ForEach, data, out, func(data Data) error {
			usr := accounts.User{Object: ref(data)}
			f := map[*string]*templates.Template{&usr.Name: u.Name, &usr.UID: u.UID, &usr.Group: u.Group, &usr.Home: u.Home,
				&usr.Shell: u.Shell, &usr.Comment: u.Comment, &usr.Password: u.Password}
			err := r.accountFields(data, "user", f, &usr.Name, &usr.UID, &usr.Group, &usr.Home, &usr.Shell, &usr.Comment, &usr.Password)
			if err == nil {
				usr.Groups, err = r.names(u.Groups, data, "user group")
			}
			if err == nil {
				out.Users = append(out.Users, usr)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ownership renders a templated owner and group. The IDs stay nil: the
// applier resolves the names once the run's accounts exist.
func (r *renderer) ownership(own configs.Ownership, ot configs.OwnerTemplates, data Data) (configs.Ownership, error) {
	for _, f := range []struct {
		t    *templates.Template
		name *string
		id   **int
		what string
	}{{ot.OwnerT, &own.Owner, &own.UID, "owner"}, {ot.GroupT, &own.Group, &own.GID, "group"}} {
		if f.t == nil {
			continue
		}
		v, err := r.text(f.t, data, f.what)
		if err != nil {
			return own, err
		}
		if v == "" {
			return own, fmt.Errorf("%s renders empty%s", f.what, objectSuffix(data))
		}
		*f.name, *f.id = v, nil
	}
	return own, nil
}
