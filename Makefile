# ccm: make demo runs the example on an embedded etcd; make test runs the tests.
GO      ?= go
BIN     := bin/ccm
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: build build-agent deb nodes-test test test-packages test-process demo demo-clean vet fmt fuzz soak chaos lint bench microbench

## build: the full binary, with the embedded etcd for trying ccm out (make demo)
build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ccm

## build-agent: the binary a node runs: without the etcd server (5 MB less resident memory)
AGENT_BIN := bin/ccm-agent
build-agent:
	$(GO) build -tags noembed -trimpath -ldflags "-s -w -X main.version=$(DEB_VERSION)" -o $(AGENT_BIN) ./cmd/ccm

## deb: the Debian package of the agent build, ccm_<version>_<arch>.deb, with nfpm
# Debian versions must grow: 0.0~<commit time>.<commit>, or DEB_VERSION=1.2.3.
DEB_VERSION ?= $(shell git log -1 --format=0.0~%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null || echo 0.0~dev)
# The packager is a module of its own (packaging/deb), so that the agent's
# module is not built against nfpm and its dependencies.
deb: build-agent
	$(GO) -C packaging/deb build -o $(CURDIR)/bin/ccm-deb .
	bin/ccm-deb -bin $(AGENT_BIN) -version $(DEB_VERSION) -out .

## nodes-test: the Debian package booted under systemd in Debian 12 containers
## (systemd-nspawn), real nginx and PHP-FPM, a 3-member etcd and network faults;
## as root, not part of make test. The root image is cached in /var/cache/ccm-test.
nodes-test:
	deb=$$($(MAKE) -s deb | tail -1) && next=$$($(MAKE) -s deb DEB_VERSION=$(DEB_VERSION)+next | tail -1) && \
	CCM_NODES_DEB=$(CURDIR)/$$deb CCM_NODES_DEB_NEXT=$(CURDIR)/$$next $(GO) -C test test -tags nodes -count=1 -timeout 40m -v ./nodes/; \
	rc=$$?; rm -f "$$deb" "$$next"; exit $$rc

## test: vet, then every test with the race detector (what CI runs): the
## packages' own tests and the process-level tests of test/ (a module of its
## own, for the browser driver), side by side
test: vet
	$(MAKE) -j2 --output-sync=target test-packages test-process

test-packages:
	$(GO) test -race -count=1 -parallel 8 -timeout 15m ./...

test-process:
	$(GO) -C test test -race -count=1 -parallel 8 -timeout 15m ./...

## demo: run the agent with an embedded etcd on examples/; files appear under ./demo-root
demo: build
	./examples/demo.sh

## fuzz: run every fuzz target for FUZZTIME each (make test runs only the seed corpora)
FUZZTIME ?= 30s
FUZZ_TARGETS := FuzzDecode:./internal/objects FuzzParseKey:./internal/objects FuzzLoad:./internal/configs FuzzConfine:./internal/render FuzzCachedRendersMatchPlainTemplates:./internal/render
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; pkg=$${t#*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	done

## soak: the SIGKILL crash loops (files, and actions) with SOAK_ITERATIONS kills, the symlink race with 100x as many runs,
## and the whole hostile-object corpus (make test runs a sample);
## then the drift scenario with its editor-like churn for SOAK_DRIFT_CHURN
SOAK_ITERATIONS ?= 200
SOAK_DRIFT_CHURN ?= 1h
soak:
	CCM_SOAK_ITERATIONS=$(SOAK_ITERATIONS) CCM_CORPUS=all $(GO) -C test test -count=1 -timeout 30m -run 'TestSIGKILLAtRandomPoints|TestSymlinkSwapsMidRunNeverEscapeTheRoot|TestTheHostileCorpusNeverReachesRoot' -v .
	$(GO) run ./bench -only drift -idle 10s -drift-churn $(SOAK_DRIFT_CHURN) -out bench/soak-drift.json

## chaos: the etcd fault tests against Debian's etcd, CHAOS_ROUNDS faults each (make test runs one)
CHAOS_ROUNDS ?= 10
chaos:
	CCM_CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(GO) -C test test -count=1 -timeout 60m -run 'TestChaos' -v .

## bench: the benchmark command against a real etcd on loopback; prints a table, writes bench/results.json
## (its scale scenario runs FLEET agent processes on a 3-member Debian etcd, for each size of the comma-separated list)
## BASELINE=<git rev> also measures ccm as built at that revision (before and after in one run);
## CONFD=<binary> measures confd beside ccm on the one-file scenario; PROFILES=<dir> keeps the agent's profiles.
BASELINE ?=
PROFILES ?=
FLEET    ?= 200,500
DRIFT_CHURN ?= 10m
bench:
	$(GO) run ./bench -out bench/results.json -fleet $(FLEET) -drift-churn $(DRIFT_CHURN) $(if $(BASELINE),-baseline $(BASELINE)) $(if $(PROFILES),-profiles $(PROFILES))

## microbench: Go benchmarks of the hot paths (compare runs with benchstat)
microbench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./internal/toposort ./internal/render ./internal/objects

## lint: staticcheck on every module (CI also runs govulncheck)
MODULES := . test packaging/deb
lint:
	for m in $(MODULES); do (cd $$m && $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...) || exit 1; done

demo-clean:
	rm -rf demo-root demo-state demo-etcd demo-config demo-releases demo-agent.log

vet:
	$(GO) vet ./...
	$(GO) -C test vet ./...

fmt:
	gofmt -l -w .
