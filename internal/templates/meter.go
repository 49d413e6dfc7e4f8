package templates

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

// A Meter is one render's allocation budget for the calls that make large
// values: each bounded call is at most MaxOutput, and the meter bounds
// their sum, so that a chain of bounded calls in a loop is bounded too.
// Functions are shared by every template, so the meter of a call is found
// by the goroutine that renders (Metered).
type Meter struct {
	limit, used int64
	aborted     atomic.Bool
}

// NewMeter returns a meter of limit bytes.
func NewMeter(limit int64) *Meter { return &Meter{limit: limit} }

// Abort makes every later metered call of the render (one of at least
// meterFree bytes) fail: the render is over another budget (its memory)
// and stops at its next large call. A render of small calls alone is not
// stopped by it: its watch has reported it stuck, and the process exits.
func (m *Meter) Abort() { m.aborted.Store(true) }

// meterFree is the size below which a call is not metered: finding the
// meter costs a microsecond, and a small call is not what exhausts memory.
const meterFree = 1 << 10

// meters maps a goroutine that renders to its meter.
var meters sync.Map

// Metered runs render on this goroutine under m.
func Metered(m *Meter, render func()) {
	id := goid()
	meters.Store(id, m)
	defer meters.Delete(id)
	render()
}

// charge counts n bytes made by fn against the meter of the calling
// goroutine, if it renders under one.
func charge(fn string, n int64) error {
	if n < meterFree {
		return nil
	}
	v, ok := meters.Load(goid())
	if !ok {
		return nil
	}
	m := v.(*Meter)
	if m.aborted.Load() {
		return fmt.Errorf("%s: the render is over its memory budget", fn)
	}
	if used := atomic.AddInt64(&m.used, n); used > m.limit {
		return fmt.Errorf("%s: the render's calls made %d bytes in all: over its budget of %d", fn, used, m.limit)
	}
	return nil
}

// goid is the calling goroutine's id, read from its stack header
// ("goroutine 123 [running]:").
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
