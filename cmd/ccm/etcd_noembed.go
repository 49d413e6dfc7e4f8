//go:build noembed

package main

import (
	"context"
	"errors"

	"go.uber.org/zap"
)

// startEmbedded refuses: this build leaves the etcd server out (the node
// agent's build, see docs/PERFORMANCE.md).
func startEmbedded(context.Context, string, string, *zap.Logger) (func(), error) {
	return nil, errors.New("--embedded-etcd: this ccm is built without the etcd server (build tag noembed); use the full build to try ccm out")
}
