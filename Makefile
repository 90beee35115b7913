# Shoal: `make test` is the one test command, `make demo` the end-to-end show.
GO        ?= go
STATICCHECK_VERSION ?= v0.8.2
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/shoalfleet/shoal/internal/version.Version=$(VERSION)

.PHONY: all build test deps lint fmt-check vet staticcheck gotest demo example-images bench release hub-image clean
PLATFORMS := linux/arm64 linux/arm/v7 linux/amd64

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## test: install missing test packages, then gofmt, vet, staticcheck and every test.
test: deps fmt-check vet staticcheck gotest

deps:
	@bash scripts/test-deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	@command -v staticcheck >/dev/null 2>&1 || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...

gotest:
	$(GO) test -count=1 -timeout 25m ./...

## demo: a simulated factory fleet end to end (DEMO_DEVICES=N, default 7; DEMO_STEPS=1 runs the script once and exits).
demo:
	$(GO) run ./demo

## example-images: build the example apps (examples/) into FROM-scratch images through the Docker Engine
## and save them as tars into FLEET, a copy of fleet-repo-example (go run ./examples/imagebuild -help).
example-images:
	@test -n "$(FLEET)" || { echo "usage: make example-images FLEET=DIR   (DIR: a copy of fleet-repo-example)"; exit 2; }
	$(GO) run ./examples/imagebuild -fleet '$(FLEET)'

## bench: run every area's benchmarks (Go ones -count 6, through benchstat) and rewrite docs/bench/*.md and
## docs/BENCHMARKS.md; about an hour. QUICK=1: short runs in minutes. AREAS="attest web": only those areas.
bench:
	QUICK='$(QUICK)' AREAS='$(AREAS)' bash bench/all.sh

## release: static, stripped binaries for every device platform, with their sizes.
release:
	@for p in $(PLATFORMS); do \
	  os=$${p%%/*}; rest=$${p#*/}; arch=$${rest%%/*}; arm=$${rest#*/v}; [ "$$arm" = "$$rest" ] && arm=""; \
	  out=$(BIN)/$$(echo $$p | tr / -); mkdir -p $$out; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out/ ./cmd/shoal-agent ./cmd/shoal || exit 1; \
	  for b in $$out/*; do printf '%-32s %6.1f MiB\n' $$b $$(echo "$$(stat -c %s $$b) / 1048576" | bc -l); done; \
	done

## hub-image: the hub's container image (shoal-hub:$(VERSION)) from a static binary on an empty base; no registry needed.
hub-image:
	GO='$(GO)' VERSION='$(VERSION)' deploy/hub-image.sh -t shoal-hub:$(VERSION)

clean:
	rm -rf $(BIN)
