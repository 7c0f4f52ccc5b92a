# tandem — build, test, benchmark, demo.
GO        ?= go
BIN       := bin/tandem
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/tandem-ha/tandem/internal/version.Version=$(VERSION)
FUZZTIME  ?= 5s
BENCHTIME ?= 1x
PKGS      := ./...

.PHONY: all build test unit fuzz bench lint demo clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tandem

# The README's test command: vet, the race-enabled suite (integration
# included), then each fuzzer briefly.
test: lint unit fuzz

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

demo:
	@echo "make demo: the demo (a primary, a backup and agents with a watched failover) is not built yet: it needs the failover engine and the reference agent (issues 4, 5, 7)." >&2; exit 1

clean:
	rm -rf bin
