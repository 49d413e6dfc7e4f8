package drift

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// raw encodes one inotify event as the kernel does.
func raw(wd int32, mask uint32, name string) []byte {
	n := 0
	if name != "" {
		n = (len(name) + 1 + 15) / 16 * 16 // NUL-padded
	}
	b := make([]byte, unix.SizeofInotifyEvent+n)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(n))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

// The kernel's IN_Q_OVERFLOW (wd -1) is an overflow, whatever the faults;
// events of a watch the loop no longer has are dropped; IN_IGNORED forgets
// the watch and reports the directory gone.
func TestParseReadsTheKernelsEvents(t *testing.T) {
	in := &inotify{byDir: map[string]int{"/r/sites": 3}, byWd: map[int]string{3: "/r/sites"}}
	var buf []byte
	buf = append(buf, raw(3, unix.IN_MOVED_TO, "a.conf")...)
	buf = append(buf, raw(9, unix.IN_MODIFY, "x")...)
	buf = append(buf, raw(3, unix.IN_DELETE|unix.IN_ISDIR, "sub")...)
	buf = append(buf, raw(-1, unix.IN_Q_OVERFLOW, "")...)
	buf = append(buf, raw(3, unix.IN_IGNORED, "")...)
	evs := in.parse(buf)
	require.Len(t, evs, 4)
	assert.Equal(t, event{dir: "/r/sites", name: "a.conf"}, evs[0])
	assert.Equal(t, event{dir: "/r/sites", name: "sub", isDir: true}, evs[1])
	assert.True(t, evs[2].overflow)
	assert.Equal(t, event{dir: "/r/sites", gone: true}, evs[3])
	assert.Empty(t, in.byDir, "the watch the kernel dropped is forgotten")
}

// An injected overflow drops the rest of the read, as the kernel's full
// queue does.
func TestAnInjectedOverflowDropsTheRestOfTheRead(t *testing.T) {
	in := &inotify{byDir: map[string]int{"/r": 1}, byWd: map[int]string{1: "/r"},
		faults: Faults{Overflow: func(real string) bool { return real == "/r/b" }}}
	buf := append(append(raw(1, unix.IN_MODIFY, "a"), raw(1, unix.IN_MODIFY, "b")...), raw(1, unix.IN_MODIFY, "c")...)
	evs := in.parse(buf)
	require.Len(t, evs, 2)
	assert.Equal(t, "a", evs[0].name)
	assert.True(t, evs[1].overflow)
}

// under is a path and what lies beneath it, not its siblings that share
// a prefix.
func TestUnderIsAPathAndItsDescendants(t *testing.T) {
	l := &loop{managed: []string{"/r/a", "/r/a.conf", "/r/a/x", "/r/a/y/z", "/r/ab", "/r/b"}}
	assert.Equal(t, []string{"/r/a", "/r/a/x", "/r/a/y/z"}, l.under("/r/a"))
	assert.Equal(t, []string{"/r/b"}, l.under("/r/b"))
	assert.Empty(t, l.under("/q"))
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]Mode{"off": Off, "watch": Watch, "repair": Repair} {
		m, err := ParseMode(s)
		require.NoError(t, err)
		assert.Equal(t, want, m)
		assert.Equal(t, s, m.String())
	}
	_, err := ParseMode("fix")
	assert.ErrorContains(t, err, `"fix": must be off, watch or repair`)
}
