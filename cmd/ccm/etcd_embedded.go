//go:build !noembed

package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/embedded"
)

// startEmbedded runs a single-member etcd in this process for
// --embedded-etcd and returns its Close.
func startEmbedded(ctx context.Context, dir, clientURL string, log *zap.Logger) (func(), error) {
	srv, err := embedded.Start(ctx, embedded.Config{Dir: dir, ClientURL: clientURL, Logger: log})
	if err != nil {
		return nil, err
	}
	return srv.Close, nil
}
