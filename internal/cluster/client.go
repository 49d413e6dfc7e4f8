package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
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
	tlsConfig, err := cfg.tls()
	if err != nil {
		return nil, err
	}
	timeout := cfg.DialTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	config := clientv3.Config{
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
		DialOptions:        []grpc.DialOption{grpc.WithChainUnaryInterceptor(requireLeader())},
	}
	cli, err := clientv3.New(config)
	if err != nil {
		return nil, err
	}
	if cfg.User != "" {
		config.Username, config.Password = "", ""
		cli.Auth = freshAuth{Auth: cli.Auth, config: config}
	}
	return cli, nil
}

// requireLeader sends every request but the maintenance ones (a
// member's own status) with etcd's require-leader flag, and sends one
// that a member refused for having no leader again, to the balancer's
// next member. A member cut off from the majority otherwise takes a
// request and holds it until the caller's deadline (a linearizable read,
// a write, a lease grant): with the balancer's round robin, one request in
// three timed out while the other two members served the cluster. The
// member refuses before it acts (etcd's gRPC interceptor), so a write is
// resent safely. Refusals are retried for up to noLeaderPatience (a
// member with a leader may still be connecting), then returned: no member
// reached has a leader. The etcd client's own retry then tries a read or
// a lease grant again until the caller's deadline; a write fails.
func requireLeader() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if strings.HasPrefix(method, "/etcdserverpb.Maintenance/") {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		ctx = clientv3.WithRequireLeader(ctx)
		giveUp := time.Now().Add(noLeaderPatience)
		for pause := 10 * time.Millisecond; ; pause *= 2 {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if !noLeader(err) || time.Now().Add(pause).After(giveUp) {
				return err
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(pause):
			}
		}
	}
}

// noLeaderPatience bounds how long requireLeader tries members for one
// with a leader.
const noLeaderPatience = time.Second

// noLeader reports whether err is a member's refusal of a request it got
// without a leader.
func noLeader(err error) bool {
	return err != nil && rpctypes.ErrorDesc(err) == rpctypes.ErrNoLeader.Error()
}

// freshAuth authenticates on a connection of its own, which carries no
// token. The etcd client asks for a new token when etcd refuses its own
// (expired, or lost with a leader change), but it asks on its connection,
// which still sends the refused token, and etcd (3.4, 3.5) refuses the
// request for it: the client then loops on "invalid auth token" forever
// (etcd-io/etcd#12385). A new connection per authentication costs one
// dial, once per token.
type freshAuth struct {
	clientv3.Auth
	config clientv3.Config // without the user: no token
}

// Authenticate gets a token for name on a new, token-less connection.
func (a freshAuth) Authenticate(ctx context.Context, name, password string) (*clientv3.AuthenticateResponse, error) {
	cfg := a.config
	cfg.Context = ctx
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return cli.Authenticate(ctx, name, password)
}

// tls returns the TLS configuration, or nil for plain connections.
func (cfg ClientConfig) tls() (*tls.Config, error) {
	if cfg.CACert == "" && cfg.Cert == "" {
		return nil, nil
	}
	info := transport.TLSInfo{TrustedCAFile: cfg.CACert, CertFile: cfg.Cert, KeyFile: cfg.Key}
	c, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS: %w", err)
	}
	return c, nil
}

// Diagnose says why no endpoint answers: it dials each one (DNS, TCP) and,
// with TLS, shakes hands, and returns the causes, one per endpoint, or nil
// when one of them connects. The etcd client itself only reports that a
// request timed out.
func Diagnose(ctx context.Context, cfg ClientConfig) error {
	tlsConfig, err := cfg.tls()
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range cfg.Endpoints {
		err := probe(ctx, ep, tlsConfig)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("etcd at %s: %w", ep, err))
	}
	return errors.Join(errs...)
}

// probe connects to one endpoint the way the client would.
func probe(ctx context.Context, endpoint string, tlsConfig *tls.Config) error {
	host := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host = u.Host
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	defer conn.Close()
	if tlsConfig == nil {
		return nil
	}
	c := tlsConfig.Clone()
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(host)
	}
	tc := tls.Client(conn, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	return nil
}
