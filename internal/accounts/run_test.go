package accounts_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/accounts"
)

// tools counts the tool runs of r by tool name.
func tools(r *accounts.Runner) map[string]int {
	n := map[string]int{}
	for _, argv := range r.Ran {
		n[argv[0]]++
	}
	return n
}

// hashOf is a well-formed SHA-512 crypt hash, different for each i.
func hashOf(i int) string {
	return fmt.Sprintf("$6$salt%04d$%s", i, strings.Repeat(fmt.Sprintf("h%04d", i), 18)[:86])
}

// assertNoHashInArgv fails when any tool run's argv holds one of hashes:
// an argv is readable by every local user in /proc/PID/cmdline.
func assertNoHashInArgv(t *testing.T, r *accounts.Runner, hashes []string) {
	t.Helper()
	for _, argv := range r.Ran {
		joined := strings.Join(argv, " ")
		assert.NotContains(t, joined, "$6$", "argv %q holds a hash", argv[0])
		for _, h := range hashes {
			assert.NotContains(t, joined, h)
		}
	}
}

// New users cost one useradd each, the tool that can serve a --root, and
// their passwords one chpasswd run between them, on its standard input.
func TestNewUsersCostOneUseraddEachAndOneChpasswd(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	n := 50
	if testing.Short() {
		n = 8
	}
	var users []accounts.User
	var hashes []string
	for i := range n {
		hashes = append(hashes, hashOf(i))
		users = append(users, accounts.User{Name: fmt.Sprintf("c%04d", i), UID: fmt.Sprint(3000 + i), Password: hashes[i], Object: fmt.Sprintf("users/c%04d", i)})
	}
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, policy, accounts.State{}, root)
	require.Empty(t, problems)
	r := runAll(t, changes)

	assert.Equal(t, map[string]int{"useradd": n, "chpasswd": 1}, tools(r))
	assert.Equal(t, []string{"chpasswd", "-e", "--root", root}, r.Ran[len(r.Ran)-1], "after every useradd")
	assertNoHashInArgv(t, r, hashes)
	shadow := fileOf(t, root, "shadow")
	for i, h := range hashes {
		assert.Contains(t, shadow, fmt.Sprintf("c%04d:%s:", i, h))
	}
	assert.Contains(t, shadow, "root:*:", "root's hash is untouched")
}

// A changed hash of a user ccm made is one chpasswd run, and nothing else
// (no usermod -p, which would put the hash in argv).
func TestAChangedHashIsOneChpasswdRunAndNoUsermod(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	users := []accounts.User{{Name: "cust01", UID: "3001", Password: hashOf(1), Object: "users/cust01"}}
	apply(t, root, nil, users, owned)

	users[0].Password = hashOf(2)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, policy, accounts.State{Owned: *owned}, root)
	require.Empty(t, problems)
	require.Len(t, changes, 1)
	assert.Equal(t, "~ user cust01: password changed", changes[0].Line)
	r := runAll(t, changes)
	assert.Equal(t, [][]string{{"chpasswd", "-e", "--root", root}}, r.Ran)
	assertNoHashInArgv(t, r, []string{hashOf(1), hashOf(2)})
	assert.Contains(t, fileOf(t, root, "shadow"), "cust01:"+hashOf(2)+":")
}

// chpasswd changes all or nothing: a line it refuses fails its own
// account, named, and every other password of the run is set all the
// same, in one more run.
func TestARefusedPasswordFailsItsAccountAlone(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	pol := policy
	pol.Adopt = []string{"alice"}
	users := []accounts.User{
		{Name: "cust01", UID: "3001", Password: hashOf(1), Object: "users/cust01"},
		{Name: "alice", Password: hashOf(2), Object: "users/alice"},
		{Name: "cust02", UID: "3002", Password: hashOf(3), Object: "users/cust02"},
	}
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, pol, accounts.State{}, root)
	require.Empty(t, problems)
	// alice goes between the plan and the run: chpasswd refuses her line.
	out, err := exec.Command("userdel", "--prefix", root, "alice").CombinedOutput()
	require.NoError(t, err, "%s", out)

	r := &accounts.Runner{}
	for _, c := range changes {
		_, err := r.Run(t.Context(), c)
		require.NoError(t, err)
	}
	failed := map[string]string{}
	var set []string
	for _, res := range r.Flush(t.Context(), nil) {
		if res.Err != nil {
			failed[res.Change.Object] = res.Err.Error()
		} else {
			set = append(set, res.Change.Name)
		}
	}
	require.Len(t, failed, 1)
	assert.Contains(t, failed["users/alice"], "~ user alice: password changed: chpasswd:")
	assert.Contains(t, failed["users/alice"], "user 'alice' does not exist")
	assert.Equal(t, []string{"cust01", "cust02"}, set)
	assert.Equal(t, map[string]int{"useradd": 2, "chpasswd": 2}, tools(r), "the batch, then the rest without alice")
	shadow := fileOf(t, root, "shadow")
	assert.Contains(t, shadow, "cust01:"+hashOf(1)+":")
	assert.Contains(t, shadow, "cust02:"+hashOf(3)+":")
}

// A held object's queued password is not set.
func TestAHeldObjectsPasswordIsNotSet(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	users := []accounts.User{
		{Name: "cust01", UID: "3001", Password: hashOf(1), Object: "users/cust01"},
		{Name: "cust02", UID: "3002", Password: hashOf(2), Object: "users/cust02"},
	}
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, policy, accounts.State{}, root)
	require.Empty(t, problems)
	r := &accounts.Runner{}
	for _, c := range changes {
		_, err := r.Run(t.Context(), c)
		require.NoError(t, err)
	}
	assert.Equal(t, 2, r.Queued())
	res := r.Flush(t.Context(), func(c accounts.Change) bool { return c.Object == "users/cust02" })
	require.Len(t, res, 1)
	assert.NoError(t, res[0].Err)
	assert.Equal(t, "cust01", res[0].Change.Name)
	shadow := fileOf(t, root, "shadow")
	assert.Contains(t, shadow, "cust01:"+hashOf(1)+":")
	assert.Contains(t, shadow, "cust02:!:", "useradd's locked password stays")
	assert.Zero(t, r.Queued())
}

// BenchmarkNewUsersWithPasswords creates 50 users with a hash each under a
// fresh root with the real tools: the Runner's one chpasswd run ("batch"),
// against a Flush after every change ("per-user", what a chpasswd per user
// cost before the Runner batched them).
func BenchmarkNewUsersWithPasswords(b *testing.B) {
	const n = 50
	var users []accounts.User
	for i := range n {
		users = append(users, accounts.User{Name: fmt.Sprintf("c%04d", i), UID: fmt.Sprint(3000 + i), Password: hashOf(i), Object: fmt.Sprintf("users/c%04d", i)})
	}
	for _, mode := range []string{"batch", "per-user"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				root := newRoot(b)
				db, err := accounts.Read(root)
				require.NoError(b, err)
				changes, problems := db.Plan(nil, users, policy, accounts.State{}, root)
				require.Empty(b, problems)
				b.StartTimer()
				r := &accounts.Runner{}
				for _, c := range changes {
					_, err := r.Run(b.Context(), c)
					require.NoError(b, err)
					if mode == "per-user" {
						for _, res := range r.Flush(b.Context(), nil) {
							require.NoError(b, res.Err)
						}
					}
				}
				for _, res := range r.Flush(b.Context(), nil) {
					require.NoError(b, res.Err)
				}
			}
		})
	}
}

// An account belongs to the object it was made for. A second object whose
// data names the same account (login: alice in mallory's object) is
// refused as that object's problem: it changes neither the password nor
// anything else of alice's, and alice's own object still converges.
// Two objects new in one run that name one account made for neither: both
// are refused, whatever their order (it had gone to the first by ID).
func TestAnAccountIsChangedOnlyByTheObjectItWasMadeFor(t *testing.T) {
	t.Parallel()
	root := newRoot(t)
	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust11", UID: "3001", Password: hashOf(1), Object: "users/cust11"}}, owned)
	require.Equal(t, "users/cust11", owned.Objects["user:cust11"])

	users := []accounts.User{
		{Name: "cust11", UID: "3001", Password: hashOf(1), Object: "users/cust11"},
		{Name: "cust11", UID: "3001", Password: hashOf(666), Shell: "/bin/sh", Object: "users/mallory"},
		{Name: "cust12", UID: "3002", Object: "users/cust12"},
		{Name: "cust12", UID: "3002", Object: "users/eve"},
	}
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, users, policy, accounts.State{Owned: *owned, AllOwned: *owned}, root)
	require.Len(t, problems, 3)
	assert.Equal(t, "users/mallory", problems[0].Object)
	assert.ErrorContains(t, problems[0].Err, "user cust11: belongs to object users/cust11")
	assert.Equal(t, "users/cust12", problems[1].Object)
	assert.ErrorContains(t, problems[1].Err, "user cust12: is declared by object users/eve too, and was made for neither")
	assert.Equal(t, "users/eve", problems[2].Object)
	assert.ErrorContains(t, problems[2].Err, "user cust12: is declared by object users/cust12 too, and was made for neither")
	for _, c := range changes {
		assert.NotEqual(t, "users/mallory", c.Object, c.Line)
		assert.NotEqual(t, "cust12", c.Name, c.Line)
	}
	runAll(t, changes)
	assert.Contains(t, fileOf(t, root, "shadow"), "cust11:"+hashOf(1)+":", "cust11's password is cust11's object's")
}

// A helper the tool starts and that outlives it (nscd, run by chpasswd
// inside its --root) cannot hold the run past its deadline: the tool's
// whole process group is killed, and its output is waited for no longer
// than toolWaitDelay. It had waited for the helper to exit: here never,
// so the test returns at all only if the run is cut off.
func TestAHungHelperOfATool(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a static helper")
	}
	t.Parallel()
	root := newRoot(t)
	src := filepath.Join(t.TempDir(), "main.go")
	require.NoError(t, os.WriteFile(src, []byte("package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Hour) }\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755))
	build := exec.Command("go", "build", "-o", filepath.Join(root, "usr/sbin/nscd"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	owned := &accounts.Owned{}
	apply(t, root, nil, []accounts.User{{Name: "cust21", UID: "3021", Object: "users/cust21"}}, owned)
	db, err := accounts.Read(root)
	require.NoError(t, err)
	changes, problems := db.Plan(nil, []accounts.User{{Name: "cust21", UID: "3021", Password: hashOf(21), Object: "users/cust21"}},
		policy, accounts.State{Owned: *owned}, root)
	require.Empty(t, problems)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r := &accounts.Runner{}
	for _, c := range changes {
		_, err := r.Run(ctx, c)
		require.NoError(t, err)
	}
	results := r.Flush(ctx, nil)
	require.Len(t, results, 1)
	assert.Error(t, results[0].Err, "the run was cut off")
}
