package actions

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cgroupRunPrefix names the cgroup of one handler run.
const cgroupRunPrefix = "ccm-run-"

// Cgroups puts each handler run in a cgroup v2 of its own under Dir, so
// that cgroup.kill ends everything the handler started, whatever it did
// with sessions and process groups: at its timeout, when it exits, and,
// for the runs of an agent that was killed, at the next start.
type Cgroups struct {
	Dir string

	clone3Once sync.Once
	clone3Err  error // ENOSYS: a seccomp filter refuses clone3 (see startsInto)
}

// ResolveCgroups decides where runs get their cgroups from --cgroup:
// "off" (none), a directory of a cgroup v2 hierarchy, or "auto": the
// agent's own cgroup when systemd delegated it (Delegate=yes), which
// makes it writable. It returns nil and the reason when runs fall back
// to their process group.
func ResolveCgroups(flag string) (*Cgroups, string) {
	switch flag {
	case "off":
		return nil, "--cgroup off"
	case "auto", "":
		dir, err := ownCgroup()
		if err != nil {
			return nil, err.Error()
		}
		if err := usable(dir); err != nil {
			return nil, err.Error()
		}
		return &Cgroups{Dir: dir}, ""
	}
	if err := usable(flag); err != nil {
		return nil, err.Error()
	}
	return &Cgroups{Dir: flag}, ""
}

// ownCgroup is the agent's own cgroup v2 directory. The root of the
// hierarchy is not one: the agent was not given a cgroup of its own.
func ownCgroup() (string, error) {
	raw, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("no cgroup: %v", err)
	}
	var path string
	for _, line := range strings.Split(string(raw), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			path = p
		}
	}
	if path == "" || path == "/" {
		return "", errors.New("the agent has no cgroup v2 of its own (run it under systemd with Delegate=yes, or give --cgroup DIR)")
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(mount, path), nil
}

// cgroup2Mount is where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("no cgroup v2: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 0:30 / /sys/fs/cgroup rw,... - cgroup2 cgroup2 rw
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if fields := strings.Fields(pre); ok && strings.HasPrefix(post, "cgroup2 ") && len(fields) >= 5 {
			return fields[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// usable checks that dir is a cgroup v2 directory with cgroup.kill that
// the agent may create cgroups in.
func usable(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		return fmt.Errorf("%s is not a cgroup v2 directory with cgroup.kill (Linux 5.14 or later)", dir)
	}
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return fmt.Errorf("cgroup %s is not writable (systemd: Delegate=yes)", dir)
	}
	return nil
}

// run is the cgroup of one handler run.
type cgroupRun struct {
	dir string
	fd  int
}

// start creates the run's cgroup; the handler is started into it
// (CLONE_INTO_CGROUP, or the fallback of startsInto), so that not even its
// first instruction runs outside.
func (c *Cgroups) start(id string) (*cgroupRun, error) {
	dir := filepath.Join(c.Dir, cgroupRunPrefix+id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup for the run: %w", err)
	}
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("cgroup for the run: %w", err)
	}
	return &cgroupRun{dir: dir, fd: fd}, nil
}

// kill ends every process in the run's cgroup.
func (r *cgroupRun) kill() {
	_ = os.WriteFile(filepath.Join(r.dir, "cgroup.kill"), []byte("1"), 0o644)
}

// end kills what is left in the run's cgroup and removes it, once the
// kernel says it is empty.
func (r *cgroupRun) end() {
	syscall.Close(r.fd)
	removeCgroup(r.dir)
}

// removeCgroup kills a run's cgroup and removes it, waiting up to 2 s for
// its processes to go.
func removeCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
	for deadline := time.Now().Add(2 * time.Second); ; {
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sweep kills and removes the run cgroups an earlier agent left (it was
// killed, and so were not its runs' processes), and reports how many.
func (c *Cgroups) sweep() int {
	dirs, _ := filepath.Glob(filepath.Join(c.Dir, cgroupRunPrefix+"*"))
	for _, d := range dirs {
		removeCgroup(d)
	}
	return len(dirs)
}

// startsInto reports whether a process can be started straight into a
// cgroup: CLONE_INTO_CGROUP needs clone3, and Go has no fallback. systemd's
// RestrictNamespaces= (any value but no) answers clone3 with ENOSYS from a
// seccomp filter, because it cannot look into clone3's flags; so do some
// container runtimes' filters. The probe is clone3 with no arguments: the
// kernel answers EINVAL, a filter ENOSYS, and no process starts either way.
// Where it reports false, run starts the handler behind a barrier instead
// (startBehindBarrier).
func (c *Cgroups) startsInto() bool {
	c.clone3Once.Do(func() {
		_, _, errno := syscall.RawSyscall(sysClone3, 0, 0, 0)
		if errno == syscall.ENOSYS {
			c.clone3Err = errno
		}
	})
	return c.clone3Err == nil
}

// sysClone3 is clone3's number, the same on every architecture Go's
// CLONE_INTO_CGROUP supports (Linux 5.3 and later).
const sysClone3 = 435

// move puts process pid into the run's cgroup.
func (r *cgroupRun) move(pid int) error {
	if err := os.WriteFile(filepath.Join(r.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move the handler into its cgroup: %w", err)
	}
	return nil
}
