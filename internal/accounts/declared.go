package accounts

import (
	"cmp"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
)

// This file is the one place where a declared account's fields, rendered
// from object data that a customer controls, become typed values. Every
// field is parsed here, deny by default, before any tool sees it; the
// planner and the tools take only the typed values. A field that fails
// names itself, and fails its object alone (quarantine).

// Name is an account name: 1 to 32 of a-z, 0-9, _ and -, starting with a
// letter or _. It holds no newline, colon, comma or leading -, so it
// cannot split a line of etc/passwd or a tool's input, nor be read as an
// option.
type Name string

// ID is a uid or gid that ccm may give: at least the policy's minimum, at
// most its maximum, and never in ReservedIDs.
type ID int

// Hash is a crypt(3) password hash, or a locked form: "!" or "*", or "!"
// before a hash. It holds only the crypt alphabet and "$", never a
// newline or a colon.
type Hash string

// ReservedIDs is the range no account of ccm's ever gets, whatever the
// policy says: Debian's dynamically allocated and system ranges above
// UID_MAX, nobody and nogroup (65534) and (uint16)-1.
var ReservedIDs = [2]int{60000, 65535}

// MaxID is the highest uid or gid a policy may allow (2^31 - 1): higher
// ones are -1 to some tools.
const MaxID = 1<<31 - 1

// DefaultMax is the default MaxUID and MaxGID: Debian's UID_MAX, less one.
const DefaultMax = 59999

// DefaultHomeBases are where a home may be when the configuration names
// no homes: under /home.
var DefaultHomeBases = []string{"/home"}

// DefaultDenyGroups are the groups that give a user root's reach, or
// another user's: no account of object data joins them or makes them, and
// run_as refuses a user in one (actions). admin is in Ubuntu's stock
// sudoers (%admin) and polkit's AdminIdentities with no such group on the
// node; lpadmin, libvirt and incus-admin are root's reach through a
// daemon's socket.
var DefaultDenyGroups = []string{"root", "adm", "admin", "disk", "shadow", "sudo", "wheel", "docker", "lxd", "incus-admin", "libvirt", "lpadmin", "systemd-journal"}

// alwaysShells are the shells a user may have whatever etc/shells says:
// they give no shell at all.
var alwaysShells = []string{"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"}

// ParseName parses an account name (see Name).
func ParseName(field, s string) (Name, error) {
	if err := CheckName(field, s); err != nil {
		return "", err
	}
	return Name(s), nil
}

var digits = regexp.MustCompile(`^[0-9]{1,10}$`)

// ParseID parses a uid or gid rendered from data: decimal digits only (no
// sign, float or exponent), within [min, max] and outside ReservedIDs.
func ParseID(field, s string, min, max int) (ID, error) {
	if !digits.MatchString(s) {
		return 0, fmt.Errorf("%s %q is not a decimal number", field, quoteShort(s))
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a number", field, quoteShort(s))
	}
	return checkID(field, n, min, max)
}

func checkID(field string, n, min, max int) (ID, error) {
	switch {
	case n < min:
		return 0, fmt.Errorf("%s %d is below %s %d", field, n, minName(field), min)
	case n >= ReservedIDs[0] && n <= ReservedIDs[1]:
		return 0, fmt.Errorf("%s %d is in the reserved range %d-%d (nobody, nogroup and the system's own)", field, n, ReservedIDs[0], ReservedIDs[1])
	case n > max:
		return 0, fmt.Errorf("%s %d is above %s %d", field, n, maxName(field), max)
	}
	return ID(n), nil
}

func minName(field string) string {
	if strings.Contains(field, "gid") {
		return "min_gid"
	}
	return "min_uid"
}

func maxName(field string) string {
	if strings.Contains(field, "gid") {
		return "max_gid"
	}
	return "max_uid"
}

// hashForms are the crypt(3) forms a Hash may take: MD5, SHA-256 and
// SHA-512 (with rounds=N, checked against MaxRounds), yescrypt and
// gost-yescrypt at the costs Debian's tools make (j7T to jDT), and bcrypt
// at cost 04 to 13. A cost is bounded because every login attempt on the
// name (sshd, su, PAM, as root) pays it: $2b$31$ is two days of CPU a try.
// They are compiled on first use, not at start-up: every ccm command
// would pay their compilation (about 0.3 ms), and only a plan or an
// apply with accounts reads them.
var hashForms = sync.OnceValue(func() []*regexp.Regexp {
	return []*regexp.Regexp{
		regexp.MustCompile(`^\$(1|5|6)\$(rounds=([0-9]{4,7})\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{1,86}$`),
		regexp.MustCompile(`^\$(y|gy)\$j[7-9A-D]T\$[./0-9A-Za-z]{1,86}\$[./0-9A-Za-z]{1,86}$`),
		regexp.MustCompile(`^\$2[aby]\$(0[4-9]|1[0-3])\$[./0-9A-Za-z]{53}$`),
	}
})

// MaxRounds is the most rounds= a SHA-256 or SHA-512 hash may ask for
// (the default is 5000).
const MaxRounds = 1000000

// ParseHash parses a password hash rendered from data. "" is no hash (the
// password is left alone).
func ParseHash(s string) (Hash, error) {
	switch s {
	case "", "!", "*", "!*":
		return Hash(s), nil
	}
	for _, re := range hashForms() {
		m := re.FindStringSubmatch(strings.TrimPrefix(s, "!"))
		if m == nil {
			continue
		}
		if len(m) > 3 && m[3] != "" {
			if n, _ := strconv.Atoi(m[3]); n > MaxRounds || n < 1000 {
				return "", fmt.Errorf("password hash asks for %d rounds: between 1000 and %d", n, MaxRounds)
			}
		}
		return Hash(s), nil
	}
	// The value is a secret: never echo it.
	return "", fmt.Errorf("password is not a crypt(3) hash ($id$[rounds=N$]salt$hash in the crypt alphabet) nor a locked form (!, *): %d bytes refused, not shown", len(s))
}

// ParseHome parses a home: an absolute, clean path strictly below one of
// bases, with no character that would split a line of etc/passwd.
func ParseHome(s string, bases []string) (string, error) {
	if err := printable("home", s, false); err != nil {
		return "", err
	}
	if !strings.HasPrefix(s, "/") || path.Clean(s) != s {
		return "", fmt.Errorf("home %q is not an absolute, clean path", quoteShort(s))
	}
	for _, b := range bases {
		if strings.HasPrefix(s, strings.TrimSuffix(b, "/")+"/") {
			return s, nil
		}
	}
	return "", fmt.Errorf("home %q is not below %s (homes)", quoteShort(s), strings.Join(bases, ", "))
}

// ParseShell parses a shell: one of allowed, or a shell that gives none
// (nologin, false).
func ParseShell(s string, allowed []string) (string, error) {
	if slices.Contains(allowed, s) || slices.Contains(alwaysShells, s) {
		return s, nil
	}
	if err := printable("shell", s, false); err != nil {
		return "", err
	}
	return "", fmt.Errorf("shell %q is not in the node's etc/shells nor the configuration's shells", quoteShort(s))
}

// ParseComment parses a comment (GECOS): printable, no colon, at most 256
// bytes.
func ParseComment(s string) (string, error) {
	if len(s) > 256 {
		return "", fmt.Errorf("comment of %d bytes: at most 256", len(s))
	}
	return s, printable("comment", s, true)
}

// printable refuses a colon, control characters and, unless unicodeOK,
// anything but ASCII.
func printable(field, s string, unicodeOK bool) error {
	for _, r := range s {
		switch {
		case r == ':':
			return fmt.Errorf("%s %q holds a colon", field, quoteShort(s))
		case r < 0x20 || r == 0x7f || unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			return fmt.Errorf("%s %q holds a control or format character %U", field, quoteShort(s), r)
		case r > 0x7e && !unicodeOK:
			return fmt.Errorf("%s %q holds a non-ASCII character %U", field, quoteShort(s), r)
		}
	}
	return nil
}

// quoteShort cuts a value for an error message.
func quoteShort(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// GroupRule is what makes a group one that an account from object data
// may join, and one that a run_as user may be in: a gid of at least MinGID
// and a name not in Deny. It is shared by accounts and actions' run_as.
type GroupRule struct {
	MinGID int
	Deny   []string
}

// Check refuses the group name (gid) under r.
func (r GroupRule) Check(name string, gid int) error {
	if slices.Contains(r.Deny, name) {
		return fmt.Errorf("group %s is denied (deny_groups)", name)
	}
	if gid < r.MinGID {
		return fmt.Errorf("group %s (gid %d) is below min_gid %d", name, gid, r.MinGID)
	}
	return nil
}

// user is a declared user once every field is parsed.
type user struct {
	name     Name
	uid      *ID
	group    Name // "": a private group of the user's name
	groups   []Name
	groupsOK bool // groups declared (possibly empty): set them
	home     string
	shell    string
	comment  string
	password Hash
	object   string
}

// group is a declared group once every field is parsed.
type group struct {
	name      Name
	gid       *ID
	members   []Name
	membersOK bool
	object    string
}

// parseUser parses every field of u under pol, naming each field that
// fails, all at once.
func (pol Policy) parseUser(u User, shells []string) (user, error) {
	var errs []error
	out := user{object: u.Object, groupsOK: u.Groups != nil}
	var err error
	if out.name, err = ParseName("name", u.Name); err != nil {
		return out, err // the rest would name an account that is not one
	}
	if u.UID != "" {
		id, err := ParseID("uid", u.UID, pol.MinUID, pol.maxUID())
		errs = append(errs, err)
		if err == nil {
			out.uid = &id
		}
	}
	if u.Group != "" {
		out.group, err = ParseName("group", u.Group)
		errs = append(errs, err)
	}
	for _, g := range u.Groups {
		n, err := ParseName("groups", g)
		errs = append(errs, err)
		out.groups = append(out.groups, n)
	}
	out.home = "/home/" + u.Name
	if u.Home != "" {
		out.home, err = ParseHome(u.Home, pol.homeBases())
		errs = append(errs, err)
	}
	if u.Shell != "" {
		out.shell, err = ParseShell(u.Shell, shells)
		errs = append(errs, err)
	}
	out.comment, err = ParseComment(u.Comment)
	errs = append(errs, err)
	out.password, err = ParseHash(u.Password)
	errs = append(errs, err)
	return out, errors.Join(errs...)
}

// parseGroup parses every field of g under pol.
func (pol Policy) parseGroup(g Group) (group, error) {
	out := group{object: g.Object, membersOK: g.Members != nil}
	var err error
	if out.name, err = ParseName("name", g.Name); err != nil {
		return out, err
	}
	var errs []error
	if g.GID != "" {
		id, err := ParseID("gid", g.GID, pol.MinGID, pol.maxGID())
		errs = append(errs, err)
		if err == nil {
			out.gid = &id
		}
	}
	for _, m := range g.Members {
		n, err := ParseName("members", m)
		errs = append(errs, err)
		out.members = append(out.members, n)
	}
	return out, errors.Join(errs...)
}

func (pol Policy) maxUID() int { return cmp.Or(pol.MaxUID, DefaultMax) }
func (pol Policy) maxGID() int { return cmp.Or(pol.MaxGID, DefaultMax) }

func (pol Policy) homeBases() []string {
	if len(pol.Homes) == 0 {
		return DefaultHomeBases
	}
	return pol.Homes
}

// groupRule is the rule for the groups a declared user joins.
func (pol Policy) groupRule() GroupRule {
	deny := pol.DenyGroups
	if deny == nil {
		deny = DefaultDenyGroups
	}
	return GroupRule{MinGID: pol.MinGID, Deny: deny}
}

// CheckPolicy checks the literal settings of a policy as a configuration
// states them, naming each that is wrong.
func (pol Policy) CheckPolicy() error {
	var errs []error
	for _, f := range []struct {
		name     string
		min, max int
	}{{"uid", pol.MinUID, pol.maxUID()}, {"gid", pol.MinGID, pol.maxGID()}} {
		if f.max > MaxID || f.max < f.min {
			errs = append(errs, fmt.Errorf("max_%s %d: must be between min_%s %d and %d", f.name, f.max, f.name, f.min, MaxID))
		}
	}
	for _, h := range pol.Homes {
		if !strings.HasPrefix(h, "/") || path.Clean(h) != h || h == "/" {
			errs = append(errs, fmt.Errorf("homes: %q is not an absolute, clean directory other than /", h))
		}
	}
	for _, s := range pol.Shells {
		if !strings.HasPrefix(s, "/") || path.Clean(s) != s {
			errs = append(errs, fmt.Errorf("shells: %q is not an absolute, clean path", s))
		}
	}
	for _, n := range pol.Adopt {
		errs = append(errs, CheckName("adopt", n))
	}
	for _, n := range pol.DenyGroups {
		errs = append(errs, CheckName("deny_groups", n))
	}
	return errors.Join(errs...)
}

// CheckOwner refuses an owner ("owner", a user) or a group ("group")
// rendered from object data that resolved to id on the node: an owner
// must be an account ccm may give (min_uid to max_uid, never nobody or
// the reserved range), a group must also pass the group rule (min_gid,
// deny_groups). A path of a customer's is never handed to a system
// account.
func (pol Policy) CheckOwner(field, name string, id int) error {
	if field == "group" {
		if _, err := checkID("gid", id, pol.MinGID, pol.maxGID()); err != nil {
			return fmt.Errorf("group %s is not one object data may name: %w", name, err)
		}
		return pol.groupRule().Check(name, id)
	}
	if _, err := checkID("uid", id, pol.MinUID, pol.maxUID()); err != nil {
		return fmt.Errorf("owner %s is not one object data may name: %w", name, err)
	}
	return nil
}

// CheckOwnerAccount is CheckOwner for an owner that exists in db, and also
// refuses an account that no configuration of ccm's made (ccms) and
// adopt: does not name, such as the operator's own uid-1000 account, and a
// user in a group the group rule denies (a sudoer owns nothing of a
// customer's).
func (pol Policy) CheckOwnerAccount(db *DB, field, name string, id int, ccms Owned) error {
	if err := pol.CheckOwner(field, name, id); err != nil {
		return err
	}
	made := ccms.Users
	if field == "group" {
		made = ccms.Groups
	}
	if !slices.Contains(made, name) && !slices.Contains(pol.Adopt, name) {
		return fmt.Errorf("%s %s is not an account ccm made (nor one adopt: names): object data names only ccm's accounts", field, name)
	}
	if field == "group" {
		return nil
	}
	rule := pol.groupRule()
	for _, g := range db.memberOf(name) {
		gid, _ := db.GID(g)
		if err := rule.Check(g, gid); err != nil {
			return fmt.Errorf("owner %s: %w", name, err)
		}
	}
	if e, ok := db.users[name]; ok {
		if err := rule.Check(db.gidName[e.gid], e.gid); err != nil {
			return fmt.Errorf("owner %s: primary %w", name, err)
		}
	}
	return nil
}
