# ccm: make demo runs the example on an embedded etcd; make test runs the tests.
GO      ?= go
BIN     := bin/ccm
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: build test demo demo-clean vet fmt

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ccm

## test: vet, then every test with the race detector (what CI runs)
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

## demo: run the agent with an embedded etcd on examples/; files appear under ./demo-root
demo: build
	./examples/demo.sh

demo-clean:
	rm -rf demo-root demo-state demo-etcd demo-agent.log

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w .
