package ratelog_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ccm-dev/ccm/internal/ratelog"
)

// clock is a zap clock the test moves by hand.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time                         { return c.now }
func (c *clock) NewTicker(d time.Duration) *time.Ticker { return time.NewTicker(d) }

func TestOneLinePerCausePerIntervalWithTheCountLeftOut(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	clk := &clock{now: time.Unix(1000, 0)}
	log := zap.New(ratelog.New(core, 30*time.Second), zap.WithClock(clk)).Named("agent")
	noLeader, timeout := errors.New("etcdserver: no leader"), errors.New("context deadline exceeded")
	for i := range 100 { // 25 s of retries, four a second
		log.Warn("watch failed; will retry", zap.Error(noLeader))
		log.With(zap.String("node", "web1")).Warn("watch failed; will retry", zap.Error(timeout))
		log.Info("action finished", zap.Int("n", i))
		clk.now = clk.now.Add(250 * time.Millisecond)
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	require.Len(t, warns, 2, "one line per cause: each error once")
	assert.Len(t, logs.FilterMessage("action finished").All(), 100, "info lines are events: none is dropped")

	clk.now = clk.now.Add(6 * time.Second) // the interval has passed
	log.Warn("watch failed; will retry", zap.Error(noLeader))
	last := logs.FilterLevelExact(zapcore.WarnLevel).All()
	require.Len(t, last, 3)
	assert.Equal(t, int64(99), last[2].ContextMap()["suppressed"], "the next line says how many were left out")
}

// A warning marked Each tells of an event each time: none is limited.
func TestALineMarkedEachIsNeverLimited(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(ratelog.New(core, 30*time.Second))
	for i := range 3 {
		log.Warn("moved aside", zap.Int("n", i), ratelog.Each())
	}
	assert.Len(t, logs.FilterMessage("moved aside").All(), 3)
}
