package actions

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ccm-dev/ccm/api"
)

// clone3Filtered names the cgroup directory the test's second process
// runs its handler under, behind a seccomp filter that refuses clone3.
const clone3Filtered = "CCM_TEST_CLONE3_FILTERED_CGROUP"

// Under systemd's RestrictNamespaces=yes, a seccomp filter answers clone3
// with ENOSYS, and Go's CLONE_INTO_CGROUP start has no fallback: every
// action of the packaged unit failed with "fork/exec ...: function not
// implemented". The same filter here, in a process of its own (a filter
// cannot be removed): the handler still runs, inside its run's cgroup
// from its first instruction, and its setsid child dies with the cgroup.
func TestAHandlerRunsInItsCgroupWhereAFilterRefusesClone3(t *testing.T) {
	if dir := os.Getenv(clone3Filtered); dir != "" {
		runBehindClone3Filter(t, dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: a seccomp filter and a cgroup of its own")
	}
	dir := writableCgroup(t)
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), clone3Filtered+"="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the run behind the filter:\n%s", out)
	require.Contains(t, string(out), "--- PASS", "the run behind the filter ran:\n%s", out)
}

// runBehindClone3Filter is the second process: it refuses clone3 to
// itself, as systemd does, and runs one handler under Cgroups{dir}.
func runBehindClone3Filter(t *testing.T, dir string) {
	refuseClone3(t)
	_, _, errno := syscall.RawSyscall(sysClone3, 0, 0, 0)
	require.Equal(t, syscall.ENOSYS, errno, "the filter answers clone3")

	work := t.TempDir()
	child := filepath.Join(work, "child")
	script := filepath.Join(work, "handler")
	require.NoError(t, os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
cat /proc/self/cgroup
setsid sh -c 'echo $$ > %[1]s.tmp; mv %[1]s.tmp %[1]s; exec sleep 300' </dev/null >/dev/null 2>&1 &
while [ ! -e %[1]s ]; do sleep 0.01; done
`, child)), 0o755))
	inv := &invocation{
		handler: &Handler{Name: "probe", Command: []string{script}},
		req:     &api.Request{ID: "clone3probe", Action: "probe"},
		id:      &identity{name: "root", home: "/"},
		timeout: time.Minute,
		cgroups: &Cgroups{Dir: dir},
	}
	o := inv.run()
	require.Equal(t, api.StateSucceeded, o.state, o.err)
	require.Contains(t, string(o.stdout), "/ccm-run-clone3probe\n", "the handler ran in its run's cgroup")
	raw, err := os.ReadFile(child)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	require.NoError(t, err)
	for deadline := time.Now().Add(10 * time.Second); running(pid); time.Sleep(20 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "the setsid child %d outlived its run's cgroup", pid)
	}
}

// refuseClone3 installs, on every thread of this process, the part of
// systemd's RestrictNamespaces= filter that matters here: clone3 fails
// with ENOSYS.
func refuseClone3(t *testing.T) {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: sysClone3},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		t.Skipf("cannot install a seccomp filter here: %v", errno)
	}
}

// running reports whether pid is alive and not a zombie.
func running(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(raw), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// writableCgroup makes a cgroup v2 directory for the test's runs, or
// skips where the machine has none the test may write.
func writableCgroup(t *testing.T) string {
	mount, err := cgroup2Mount()
	if err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(mount, fmt.Sprintf("ccm-actions-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cgroup v2 at %s is not writable here: %v", mount, err)
	}
	t.Cleanup(func() { removeCgroup(dir) })
	if err := usable(dir); err != nil {
		t.Skip(err)
	}
	return dir
}
