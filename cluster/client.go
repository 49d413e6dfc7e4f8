package cluster

import (
	"crypto/tls"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ClientConfig says how to reach etcd.
type ClientConfig struct {
	Endpoints []string
	// CACert, Cert and Key are PEM file paths. With CACert or Cert set the
	// connection uses TLS.
	CACert, Cert, Key string
	// User and Password enable etcd authentication.
	User, Password string
	// DialTimeout bounds connection setup; 5s when zero.
	DialTimeout time.Duration
	Logger      *zap.Logger
}

// MaxObjectBytes is the largest request ccm sends to etcd.
const MaxObjectBytes = 32 << 20

// NewClient returns an etcd client. Like clientv3.New it does not block: an
// unreachable cluster shows on the first request.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints")
	}
	var tlsConfig *tls.Config
	if cfg.CACert != "" || cfg.Cert != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.CACert, CertFile: cfg.Cert, KeyFile: cfg.Key}
		var err error
		if tlsConfig, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
	}
	timeout := cfg.DialTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         tlsConfig,
		Username:    cfg.User,
		Password:    cfg.Password,
		DialTimeout: timeout,
		Logger:      log.Named("etcd"),
		// Keepalives notice a dead member, so the balancer moves on.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// Objects of several MB: etcd's --max-request-bytes is the limit
		// that counts, not gRPC's 2 MB default.
		MaxCallSendMsgSize: MaxObjectBytes,
	})
}
