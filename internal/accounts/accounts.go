// Package accounts plans and applies UNIX users and groups with the
// system's own tools (useradd, usermod, userdel, groupadd, groupmod,
// groupdel and chpasswd from shadow-utils), as argv lists with no shell,
// under --prefix so that a --root holds its own /etc. It never writes
// /etc/passwd, /etc/group or /etc/shadow itself: it only reads them.
//
// A Runner carries out a run's changes with as few tool runs as the tools
// allow: one tool run per account created or changed (no batch tool of
// shadow-utils serves a --root), and one chpasswd run for every password
// of the run, on its standard input.
package accounts

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// User is a user a configuration declares, as rendered: every field is
// the text a template made from object data, untrusted until Plan parses
// it (declared.go). "" leaves a field to the tools' default (UID, Shell)
// or alone (Password).
type User struct {
	Name    string
	UID     string // "": ccm picks one (see Plan)
	Group   string // primary group; "" makes a group of the user's name
	Groups  []string
	Home    string // "" is /home/<name>
	Shell   string // "" is the tools' default
	Comment string
	// Password is a crypt(3) hash from object data, "" to leave it alone.
	// It is never printed, and reaches chpasswd on its standard input.
	Password string
	// Object is the for_each object ("type/id") the user is declared for.
	Object string
}

// Group is a group a configuration declares, as rendered (see User).
type Group struct {
	Name    string
	GID     string   // "": ccm picks one
	Members []string // nil leaves the members alone
	Object  string
}

// Policy is what a configuration lets ccm touch. Its fields are literal
// in the configuration, never rendered from data.
type Policy struct {
	// MinUID and MinGID are the lowest IDs ccm creates, changes or gives:
	// an account below them is a system account and never touched.
	MinUID, MinGID int
	// MaxUID and MaxGID are the highest IDs ccm gives (0: DefaultMax).
	MaxUID, MaxGID int
	// RemoveHome deletes a removed user's home with it (userdel -r).
	RemoveHome bool
	// Adopt names existing accounts ccm did not create that it may
	// change all the same. Any other existing account is refused.
	Adopt []string
	// Homes are the directories a home may be below (nil:
	// DefaultHomeBases).
	Homes []string
	// Shells are the shells a user may have (nil: the root's etc/shells).
	Shells []string
	// DenyGroups are groups no declared user may join (nil:
	// DefaultDenyGroups).
	DenyGroups []string
	// ReuseUIDs and ReuseGIDs release retired IDs: an operator's word that
	// a removed account's files are gone, so its ID may be given again.
	ReuseUIDs, ReuseGIDs []int
}

// DefaultMin is the default MinUID and MinGID, Debian's first user ID.
const DefaultMin = 1000

// Owned is what a configuration created, from its manifest: the only
// accounts it may remove.
type Owned struct {
	Users  []string `json:"users,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Objects maps "user:NAME" and "group:NAME" to the object ("type/id")
	// the account was made for: never removed while that object is held.
	// An account the configuration made for itself maps to ByConfiguration,
	// so that no object takes it over once the configuration stops
	// declaring it. One with no entry was made before ccm recorded this.
	Objects map[string]string `json:"account_objects,omitempty"`
}

// ByConfiguration is the Owned.Objects entry of an account the
// configuration declared itself (an entry without for_each). No object
// reference ("type/id") can be it.
const ByConfiguration = "-"

// Contested is the Owned.Objects entry of an account made before ccm
// recorded for whom that two objects named at once: either may be its own,
// so it is frozen for objects from then on (Plan): it changes nothing,
// none joins it, and it goes once nobody names it. No object reference
// can be it.
const Contested = "?"

// candidate is the prefix of the Owned.Objects entry of an account made
// before ccm recorded for whom that one object named while another object
// was held: "~type/id". Only that object gets it, in a run that holds
// none; another that names it alone makes it Contested.
const candidate = "~"

// objectOf is the object a recorded entry names: "" for none, for the
// configuration itself, and for a contested or candidate's account.
func objectOf(entry string) string {
	if entry == ByConfiguration || entry == Contested || strings.HasPrefix(entry, candidate) {
		return ""
	}
	return entry
}

// settled reports whether an entry says for whom the account was made (an
// object or the configuration), or that it is contested for good: not an
// account still waiting for its one declarer.
func settled(entry string, ok bool) bool {
	return ok && !strings.HasPrefix(entry, candidate)
}

// Declared returns o with a record of whom each account o owns with no
// entry was made for, from the declarations of a run: ByConfiguration
// where the configuration declares it (it wins, as in Plan); Contested
// where two objects name it, or one other than the candidate seen before;
// the one object that names it when no object is held (a held object
// renders nothing, and the account may be its own), if it is the
// candidate or there is none; while an object is held, that object as the
// candidate. Plan freezes every account not settled. An account made
// before ccm recorded for whom is then kept from the other objects: the
// configuration's once it no longer declares it, an object's once another
// names it, and one whose object left while another was held from the
// next object to name it.
//
// Accounts adopt: names (adopted) are recorded alike once an object names
// them, so that one that two objects named, or whose object was held, goes
// to no other object either.
func (o Owned) Declared(groups []Group, users []User, held map[string]bool, adopted ...string) Owned {
	by := accountClaims(groups, users, o).by
	for _, key := range slices.Sorted(maps.Keys(by)) {
		entry, recorded := o.Objects[key]
		if settled(entry, recorded) && entry != Contested || !o.ours(key, adopted) {
			continue
		}
		var rec string
		switch decl := by[key]; {
		case slices.Contains(decl, ""):
			rec = ByConfiguration
		case entry == Contested: // stays so
			continue
		case len(decl) > 1, recorded && entry != candidate+decl[0]:
			rec = Contested // two at once, or another than the one seen before
		case len(held) == 0:
			rec = decl[0]
		case !recorded:
			rec = candidate + decl[0] // seen while an object is held: only it gets it
		default:
			continue
		}
		o = o.record(key, rec)
	}
	return o
}

// record returns o with rec as the entry of key, o's own map untouched.
func (o Owned) record(key, rec string) Owned {
	objs := maps.Clone(o.Objects)
	if objs == nil {
		objs = map[string]string{}
	}
	objs[key] = rec
	o.Objects = objs
	return o
}

// ours reports whether the account key ("user:NAME", "group:NAME") is the
// configuration's: made by it, or named in adopted.
func (o Owned) ours(key string, adopted []string) bool {
	kind, name, _ := strings.Cut(key, ":")
	list := o.Users
	if kind == "group" {
		list = o.Groups
	}
	return slices.Contains(list, name) || slices.Contains(adopted, name)
}

// Records returns o with the entries of from (Declared's, of the same
// manifest) for the accounts with no settled entry, and the
// configuration's over a contested one (it wins, as in Plan).
func (o Owned) Records(from Owned) Owned {
	for key, rec := range from.Objects {
		cur, ok := o.Objects[key]
		if settled(cur, ok) && !(cur == Contested && rec == ByConfiguration) || cur == rec {
			continue
		}
		o = o.record(key, rec)
	}
	return o
}

var namePattern = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// CheckName refuses a name useradd would refuse, or that could be read as
// an option or a number.
func CheckName(field, name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%s %q is not an account name: want 1 to 32 of a-z, 0-9, _ and -, starting with a letter or _", field, name)
	}
	return nil
}

// entry is one line of etc/passwd or etc/group.
type entry struct {
	name    string
	id, gid int // gid: a user's primary group
	home    string
	shell   string
	comment string
	members []string // a group's
}

// DB is the accounts of a root, as its etc/passwd, etc/group and
// etc/shadow say.
type DB struct {
	users, groups     map[string]entry
	uidName, gidName  map[int]string
	hash              map[string]string
	shells            []string // the root's etc/shells
	passwd, groupFile string
}

// Read reads the accounts under root. A missing file reads as empty.
func Read(root string) (*DB, error) {
	db := &DB{users: map[string]entry{}, groups: map[string]entry{}, uidName: map[int]string{}, gidName: map[int]string{},
		hash: map[string]string{}, passwd: filepath.Join(root, "etc/passwd"), groupFile: filepath.Join(root, "etc/group")}
	err := readLines(db.passwd, 7, func(f []string) error {
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		db.users[f[0]] = entry{name: f[0], id: uid, gid: gid, comment: f[4], home: f[5], shell: f[6]}
		if _, taken := db.uidName[uid]; !taken {
			db.uidName[uid] = f[0]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = readLines(db.groupFile, 4, func(f []string) error {
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			return err
		}
		var members []string
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		db.groups[f[0]] = entry{name: f[0], id: gid, members: members}
		if _, taken := db.gidName[gid]; !taken {
			db.gidName[gid] = f[0]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = readLines(filepath.Join(root, "etc/shadow"), 2, func(f []string) error {
		db.hash[f[0]] = f[1]
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = readLines(filepath.Join(root, "etc/shells"), 1, func(f []string) error {
		if len(f) == 1 && strings.HasPrefix(f[0], "/") {
			db.shells = append(db.shells, strings.TrimSpace(f[0]))
		}
		return nil
	})
	return db, err
}

// shellsFor returns the shells a declared user may have under pol: the
// configuration's list, or else the root's etc/shells.
func (db *DB) shellsFor(pol Policy) []string {
	if pol.Shells != nil {
		return pol.Shells
	}
	return db.shells
}

// readLines calls fn with the fields of every line of a colon file.
func readLines(path string, fields int, fn func([]string) error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ":")
		if len(parts) < fields {
			return fmt.Errorf("%s:%d: want %d fields", path, n, fields)
		}
		if err := fn(parts); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	return sc.Err()
}

// Usable returns an error when the root has no account files: the tools
// work on <root>/etc/passwd, group, shadow and gshadow, and ccm never
// creates them. A root without them plans as one without accounts.
func (db *DB) Usable() error {
	for _, p := range []string{db.passwd, db.groupFile} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("accounts: %s: %w (under --root the tools work on the root's own /etc account files, which ccm never creates)", p, err)
		}
	}
	return nil
}

// UID returns the ID of a user.
func (db *DB) UID(name string) (int, bool) {
	e, ok := db.users[name]
	return e.id, ok
}

// GID returns the ID of a group.
func (db *DB) GID(name string) (int, bool) {
	e, ok := db.groups[name]
	return e.id, ok
}
