package render

import (
	"fmt"
	"strconv"
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

// accountFields renders the fields of one account, in order, into the
// strings they point at, and an ID field into id (nil when it renders
// empty).
func (r *renderer) accountFields(data Data, kind string, id **int, idT *templates.Template, fields map[*string]*templates.Template, order ...*string) (string, error) {
	var name string
	for _, p := range order {
		v, err := r.text(fields[p], data, kind+" field")
		if err != nil {
			return "", err
		}
		*p = v
		if name == "" {
			name = v
			if err := accounts.CheckName(kind+" name", v); err != nil {
				return "", fmt.Errorf("%w%s", err, objectSuffix(data))
			}
		}
	}
	raw, err := r.text(idT, data, kind+" id")
	if err != nil || raw == "" {
		return name, err
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return name, fmt.Errorf("%s %s: id %q is not a number%s", kind, name, raw, objectSuffix(data))
	}
	*id = &n
	return name, nil
}

// names renders a list of account names.
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
		if err := accounts.CheckName(what, v); err != nil {
			return nil, fmt.Errorf("%w%s", err, objectSuffix(data))
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
			_, err := r.accountFields(data, "group", &grp.GID, g.GID, map[*string]*templates.Template{&grp.Name: g.Name}, &grp.Name)
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
			f := map[*string]*templates.Template{&usr.Name: u.Name, &usr.Group: u.Group, &usr.Home: u.Home,
				&usr.Shell: u.Shell, &usr.Comment: u.Comment, &usr.Password: u.Password}
			_, err := r.accountFields(data, "user", &usr.UID, u.UID, f, &usr.Name, &usr.Group, &usr.Home, &usr.Shell, &usr.Comment, &usr.Password)
			if err == nil {
				usr.Groups, err = r.names(u.Groups, data, "user group")
			}
			if err == nil && usr.Home != "" && !strings.HasPrefix(usr.Home, "/") {
				err = fmt.Errorf("user %s: home %q is not an absolute path%s", usr.Name, usr.Home, objectSuffix(data))
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
