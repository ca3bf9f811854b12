# Ferry — see README.md. Every target installs what it needs (hack/deps.sh).
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
GO ?= go
BIN := bin/ferry
GUEST := build/guest/initrd.img
# End-to-end tests boot real guests; they share the machine's two cores.
TEST_TIMEOUT ?= 25m
# The end-to-end tests' bound: far above their ~17 min, so a slow machine
# fails on a test, not on the package timeout.
E2E_TIMEOUT ?= 40m

.PHONY: all deps build guest test unit e2e demo generate lint clean fuzz bench-fleet bench-tls package

all: build

deps:
	@bash hack/deps.sh

build: deps
	$(GO) build -ldflags "-X github.com/ferryvm/ferry/internal/version.revision=$$(git rev-parse HEAD 2>/dev/null)" -o $(BIN) ./cmd/ferry

# The Debian package dist/ferry_<version>_amd64.deb (nfpm from the module
# proxy; version from the latest tag, else 0.0.0~git<commit time>.<hash>;
# FERRY_VERSION=1.2.3 overrides it).
package: deps
	bash hack/package.sh dist

guest: deps
	bash hack/build-guest.sh build/guest

# The README's test command: unit tests and end-to-end tests with real QEMU,
# real etcd and real network namespaces.
# Unit tests run with the race detector; the fault exploration of the
# migration engine prints its summary (cases explored, violations); the
# end-to-end tests run last, one package at a time.
test: deps guest build
	FERRY_GUEST_DIR=$(CURDIR)/build/guest FERRY_BIN=$(CURDIR)/$(BIN) \
		$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -p 1 $$($(GO) list ./... | grep -v /test/e2e)
	$(MAKE) fuzz
	set -o pipefail; $(GO) test -count=1 -v -run 'TestFaultExploration|TestPairFaults|TestTripleFaults|TestCheckerCatchesBrokenRule' ./internal/migration/sim \
		| grep -E '^(fault|pair-fault|triple-fault) exploration|^checker self-test|^(ok|FAIL|---)'
	set -o pipefail; FERRY_GUEST_DIR=$(CURDIR)/build/guest FERRY_BIN=$(CURDIR)/$(BIN) \
		$(GO) test -json -count=1 -timeout $(E2E_TIMEOUT) ./test/e2e/... | $(GO) run ./hack/testsum

# A short, bounded fuzz run of each target (seed corpora in each package's
# testdata/fuzz; a crash found is fixed and its input kept there).
FUZZTIME ?= 5s
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzParseValidate$$' -fuzztime $(FUZZTIME) ./internal/spec
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./internal/qmp

unit: deps
	$(GO) test -count=1 -short ./internal/...

demo: deps guest build
	$(BIN) dev demo --guest-dir build/guest

generate:
	@command -v buf >/dev/null || $(GO) install github.com/bufbuild/buf/cmd/buf@v1.75.0
	@command -v protoc-gen-go >/dev/null || $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	@command -v protoc-gen-connect-go >/dev/null || $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
	buf lint
	buf generate

lint:
	gofmt -l $$(git ls-files '*.go') | tee /dev/stderr | (! read)
	$(GO) vet ./...

clean:
	rm -rf bin build dist

# Ferry vs QEMU 10 defaults vs libvirt 11.3 defaults and tuned (bench/README.md);
# a subset: BENCH_FLAGS="-runs 1 -scenarios wan,flaky -systems ferry,libvirt-tuned".
bench: deps guest build
	bash hack/deps.sh --libvirt
	$(GO) run ./bench/cmd/ferry-bench $(BENCH_FLAGS)

# The cost of encryption: the same Ferry migrations on TLS (the default)
# and in plaintext (--insecure-transport), side by side in one run.
BENCH_TLS_FLAGS ?= -scenarios idle
bench-tls: deps guest build
	$(GO) run ./bench/cmd/ferry-bench -systems ferry,ferry-plain $(BENCH_TLS_FLAGS)

# Plans (does not execute) a drain of one host and a full rebalance of a
# FAKE simulated fleet (internal/fleetsim): 1,000 hosts, 20,000 VMs; prints
# planning time, memory, predicted ETA and migrations proposed.
# Flags: BENCH_FLEET_FLAGS="-runs 5 -seed 2 -hosts 1000 -vms 20000".
bench-fleet:
	$(GO) run ./bench/cmd/ferry-bench-fleet $(BENCH_FLEET_FLAGS)
