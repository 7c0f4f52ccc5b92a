# tandem — build, test, benchmark, demo.
GO        ?= go
BIN       := bin/tandem
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/tandem-ha/tandem/internal/version.Version=$(VERSION)
FUZZTIME  ?= 5s
BENCHTIME ?= 1x
PKGS      := ./...

.PHONY: all build test unit fuzz bench lint demo demo-group demo-activemq soak clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tandem

# The README's test command: gofmt + vet, each fuzzer briefly, a short
# fault soak, then the race-enabled suite (integration included) — last, so
# its summary closes the output.
test: lint fuzz soak unit

unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# Every Fuzz* target in the module, FUZZTIME each (seed corpora live in testdata/fuzz).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# Benchmarks; figures go in issue notes. BENCHTIME=5x for steadier numbers.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout 60m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@if command -v promtool >/dev/null 2>&1; then promtool check rules deploy/prometheus/tandem-rules.yml; \
	elif [ "$$CI" = true ]; then echo "promtool not found (apt-get install prometheus): required when CI=true"; exit 1; \
	else echo "promtool not installed: skipping promtool check rules (apt-get install prometheus)"; fi

# A primary, a backup and three agents on the embedded broker; kill the
# primary and watch the backup take over and the agents move (under a minute).
demo: build
	bash demo/run.sh

# The same with the heartbeat channel on a local ActiveMQ (apt-get install activemq).
demo-activemq: build
	ACTIVEMQ=1 bash demo/run.sh

# A group of three servers (priorities, health checks, services) and three
# agents: a failing check hands over, a kill -9 fails over past an unhealthy
# backup, then a switchover --to (under a minute).
demo-group: build
	bash demo/group.sh

# Randomized fault soak: make soak SEED=42 CYCLES=300 (SEED default: time),
# with a hostile stranger on the brokers throughout (forged and replayed
# frames: SOAK_HOSTILE=0 turns it off); then the group soak (three servers
# with priorities, health checks and services: TestSoakGroup) for
# CYCLES_GROUP cycles; then the arbiter soak (a pair under a real
# three-member etcd, I8 checked after every cycle: TestSoakArbiter) for
# CYCLES_ARBITER cycles.
SEED   ?=
CYCLES ?= 20
CYCLES_GROUP ?= 8
CYCLES_ARBITER ?= 10
SOAK_HOSTILE ?= 1
soak:
	TANDEM_SOAK=1 SEED=$(SEED) CYCLES=$(CYCLES) SOAK_HOSTILE=$(SOAK_HOSTILE) $(GO) test -race -count=1 -run '^TestSoak$$' -timeout 120m -v ./integration
	TANDEM_SOAK=1 SOAK_GROUP=1 SEED=$(SEED) CYCLES=$(CYCLES_GROUP) $(GO) test -race -count=1 -run '^TestSoakGroup$$' -timeout 60m -v ./integration
	TANDEM_SOAK=1 SOAK_ARBITER=1 SEED=$(SEED) CYCLES=$(CYCLES_ARBITER) $(GO) test -race -count=1 -run '^TestSoakArbiter$$' -timeout 60m -v ./integration

clean:
	rm -rf bin
