package main

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// fakeReadiness answers Ready from a value the test sets.
type fakeReadiness struct{ notReady atomic.Pointer[string] }

func (f *fakeReadiness) Healthy() error { return nil }
func (f *fakeReadiness) Ready() error {
	if why := f.notReady.Load(); why != nil {
		return errors.New(*why)
	}
	return nil
}

// `systemctl status ccm` said "not ready: object watch not synced with
// etcd" long after /readyz said ok: STATUS= was sent only with the
// watchdog ping. Here the watchdog interval is an hour, so STATUS= can
// follow readiness only by itself, on a real notify socket.
func TestTheStatusLineFollowsReadinessBetweenWatchdogPings(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "3600000000")
	t.Setenv("WATCHDOG_PID", "")

	ag := &fakeReadiness{}
	why := "object watch not synced with etcd"
	ag.notReady.Store(&why)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); notifyEvery(ctx, ag, 10*time.Millisecond, zap.NewNop()) }()
	defer wg.Wait()
	defer cancel()

	statuses := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(statuses)
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if s, ok := strings.CutPrefix(line, "STATUS="); ok {
					statuses <- s
				}
			}
		}
	}()
	next := func(want string) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case s := <-statuses:
				if s == want {
					return
				}
			case <-timeout:
				t.Fatalf("no STATUS=%q before the next watchdog ping", want)
			}
		}
	}
	next("not ready: object watch not synced with etcd")
	ag.notReady.Store(nil)
	next("converging; watching etcd")
	lost := "no live session with etcd"
	ag.notReady.Store(&lost)
	next("not ready: no live session with etcd")
}
