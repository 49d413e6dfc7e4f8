package drift

import (
	"context"
	"errors"
	"os"
	"path"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errNoSpace is inotify_add_watch's ENOSPC: fs.inotify.max_user_watches
// is reached. errMissing: the directory does not exist (now).
var (
	errNoSpace = unix.ENOSPC
	errMissing = unix.ENOENT
)

// errNoInstance is every add of a watcher that got no inotify instance.
var errNoInstance = errors.New("no inotify instance")

// watchMask is what a directory's watch reports: every way a managed
// entry can change (write, truncate, chmod, chown, create, delete, rename
// in or out), and the directory's own deletion or move. IN_ONLYDIR and
// IN_DONT_FOLLOW: a symlink swapped in for a directory is not followed.
// IN_EXCL_UNLINK: a file unlinked but still open reports nothing more.
const watchMask = unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
	unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// event is one inotify event, resolved to the watched directory.
type event struct {
	dir, name string
	isDir     bool
	// gone: the watched directory itself was deleted or moved away.
	gone bool
	// overflow: events were lost (IN_Q_OVERFLOW).
	overflow bool
}

// inotify is one inotify instance with one watch per directory.
type inotify struct {
	f      *os.File
	faults Faults

	mu    sync.Mutex // the reader resolves descriptors while the loop adds
	byDir map[string]int
	byWd  map[int]string
	// ids is the device and inode each watch was added on: a watch
	// follows its inode when a directory above it is moved, so the path
	// may name another directory since.
	ids map[string]fileID
}

// fileID is a directory's device and inode.
type fileID struct{ dev, ino uint64 }

// idOf is dir's device and inode, without following a symlink.
func idOf(dir string) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), st.Ino}, true
}

func openInotify(faults Faults) (*inotify, error) {
	if faults.Init != nil {
		return nil, os.NewSyscallError("inotify_init1", faults.Init)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	// Non-blocking under the runtime's poller: close ends a read.
	return &inotify{f: os.NewFile(uintptr(fd), "inotify"), faults: faults, byDir: map[string]int{}, byWd: map[int]string{}, ids: map[string]fileID{}}, nil
}

// noInotify is an inotify without an instance: it watches nothing, so
// that every directory is scanned.
func noInotify() *inotify {
	return &inotify{byDir: map[string]int{}, byWd: map[int]string{}, ids: map[string]fileID{}}
}

func (in *inotify) close() {
	if in.f != nil {
		in.f.Close()
	}
}

func (in *inotify) add(dir string) error {
	if in.f == nil {
		return errNoInstance
	}
	sc, err := in.f.SyscallConn()
	if err != nil {
		return err
	}
	id, _ := idOf(dir) // before the watch: a directory swapped in between is found stale
	var wd int
	var werr error
	if err := sc.Control(func(fd uintptr) { wd, werr = unix.InotifyAddWatch(int(fd), dir, watchMask) }); err != nil {
		return err
	}
	if werr != nil {
		if errors.Is(werr, unix.ENOTDIR) {
			werr = errMissing // a file stands there: as good as missing
		}
		return &os.PathError{Op: "inotify_add_watch", Path: dir, Err: werr}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if old, ok := in.byWd[wd]; ok && old != dir {
		delete(in.byDir, old) // the same directory by another path
		delete(in.ids, old)
	}
	in.byDir[dir] = wd
	in.byWd[wd] = dir
	in.ids[dir] = id
	return nil
}

// stale lists the watched directories, among dirs, whose path no longer
// names the directory watched (moved with a parent, deleted, replaced).
func (in *inotify) stale(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		in.mu.Lock()
		want, ok := in.ids[d]
		in.mu.Unlock()
		if !ok {
			continue
		}
		if id, ok := idOf(d); !ok || id != want {
			out = append(out, d)
		}
	}
	return out
}

func (in *inotify) remove(dir string) {
	in.mu.Lock()
	wd, ok := in.byDir[dir]
	delete(in.byDir, dir)
	delete(in.ids, dir)
	if ok && in.byWd[wd] == dir {
		delete(in.byWd, wd)
	}
	in.mu.Unlock()
	if !ok || in.f == nil {
		return
	}
	if sc, err := in.f.SyscallConn(); err == nil {
		_ = sc.Control(func(fd uintptr) { _, _ = unix.InotifyRmWatch(int(fd), uint32(wd)) })
	}
}

func (in *inotify) watched(dir string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	_, ok := in.byDir[dir]
	return ok
}

func (in *inotify) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.byDir)
}

func (in *inotify) dirs() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]string, 0, len(in.byDir))
	for d := range in.byDir {
		out = append(out, d)
	}
	return out
}

// read sends each read's events until ctx is done or the descriptor is
// closed; it closes out.
func (in *inotify) read(ctx context.Context, out chan<- []event) {
	defer close(out)
	if in.f == nil {
		return
	}
	buf := make([]byte, 64*1024)
	for {
		n, err := in.f.Read(buf)
		if err != nil {
			return
		}
		evs := in.parse(buf[:n])
		if len(evs) == 0 {
			continue
		}
		select {
		case out <- evs:
		case <-ctx.Done():
			return
		}
	}
}

// parse decodes one read. A watch the kernel dropped (IN_IGNORED) is
// forgotten, and reported as gone if the directory was still wanted.
func (in *inotify) parse(buf []byte) []event {
	var evs []event
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := ""
		if raw.Len > 0 {
			b := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
			for i, c := range b {
				if c == 0 {
					b = b[:i]
					break
				}
			}
			name = string(b)
		}
		off += unix.SizeofInotifyEvent + int(raw.Len)
		if raw.Mask&unix.IN_Q_OVERFLOW != 0 {
			evs = append(evs, event{overflow: true})
			continue
		}
		in.mu.Lock()
		dir, ok := in.byWd[int(raw.Wd)]
		if ok && raw.Mask&unix.IN_IGNORED != 0 {
			delete(in.byWd, int(raw.Wd))
			delete(in.byDir, dir)
			delete(in.ids, dir)
		}
		in.mu.Unlock()
		if !ok {
			continue
		}
		if f := in.faults.Overflow; f != nil && f(path.Join(dir, name)) {
			return append(evs, event{overflow: true}) // the rest of the queue is lost
		}
		switch {
		case raw.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
			evs = append(evs, event{dir: dir, gone: true})
		default:
			evs = append(evs, event{dir: dir, name: name, isDir: raw.Mask&unix.IN_ISDIR != 0})
		}
	}
	return evs
}
