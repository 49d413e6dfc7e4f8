// Package embedded runs a single-member etcd inside the ccm process, so that
// one node works with no etcd installed (--embedded-etcd DIR).
//
// Its data lives in the directory given, so objects survive restarts. It is
// for single-node setups and demos; a cluster of nodes points --endpoints at
// a real etcd cluster instead.
package embedded

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config says where the embedded etcd keeps its data and listens.
type Config struct {
	// Dir is the data directory.
	Dir string
	// ClientURL is where clients connect, e.g. http://127.0.0.1:2379. The
	// peer listener takes the next port.
	ClientURL string
	// Logger receives etcd's logs; nil discards them.
	Logger *zap.Logger
}

// Server is a running embedded etcd.
type Server struct {
	etcd  *embed.Etcd
	level zap.AtomicLevel
}

// Start starts the server and waits until it serves requests or ctx ends.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	client, err := url.Parse(cfg.ClientURL)
	if err != nil || client.Port() == "" {
		return nil, fmt.Errorf("embedded etcd: client URL %q: want http://host:port", cfg.ClientURL)
	}
	port, _ := strconv.Atoi(client.Port())
	peer := url.URL{Scheme: "http", Host: client.Hostname() + ":" + strconv.Itoa(port+1)}
	ec := embed.NewConfig()
	ec.Name = "ccm"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// etcd's own logs are noise for ccm's users below error, and at shutdown
	// even its errors are (closed listeners): level is raised by Close.
	level := zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	log := zap.NewNop()
	if cfg.Logger != nil {
		log = cfg.Logger.Named("embedded-etcd").WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return &levelCore{Core: c, level: level}
		}))
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log)
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, level: level}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(time.Minute):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after a minute", cfg.Dir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

// Close stops the server.
func (s *Server) Close() {
	s.level.SetLevel(zapcore.FatalLevel)
	s.etcd.Close()
}

// levelCore filters a core by a level that can change.
type levelCore struct {
	zapcore.Core
	level zap.AtomicLevel
}

func (c *levelCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) && c.Core.Enabled(l) }

func (c *levelCore) With(f []zapcore.Field) zapcore.Core {
	return &levelCore{Core: c.Core.With(f), level: c.level}
}

func (c *levelCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return c.Core.Check(e, ce)
	}
	return ce
}
