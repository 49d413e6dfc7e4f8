# ccm: make demo runs the example on an embedded etcd; make test runs the tests.
GO      ?= go
BIN     := bin/ccm
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

# The demo: everything under ./demo-*, etcd embedded on a port of its own.
DEMO_ENV := CCM_CONFIG_DIR=examples/ccm CCM_ROOT=demo-root CCM_STATE_DIR=demo-state \
	CCM_EMBEDDED_ETCD=demo-etcd CCM_ENDPOINTS=127.0.0.1:23790 CCM_NODE=demo CCM_LOG_FORMAT=console

.PHONY: build test demo demo-clean vet fmt

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ccm

## test: vet, then every test with the race detector (what CI runs)
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

## demo: load the sample objects into an embedded etcd and converge ./demo-root
demo: build
	@mkdir -p demo-root
	$(DEMO_ENV) $(BIN) object import examples/objects.json
	$(DEMO_ENV) $(BIN) plan --color=always; test $$? -ne 1
	$(DEMO_ENV) $(BIN) apply --once
	$(DEMO_ENV) $(BIN) plan
	$(DEMO_ENV) $(BIN) status
	@echo; echo "Files converged under ./demo-root:"; find demo-root -type f | sort

demo-clean:
	rm -rf demo-root demo-state demo-etcd

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w .
