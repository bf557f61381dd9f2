# Isolator: endpoint isolation in throwaway KVM micro VMs.
# Run `make help` for the list of targets.

SHELL        := /bin/bash
export PATH  := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
GO           ?= go
BIN          := bin
PREFIX       ?= /usr/local
DESTDIR      ?=
STATICCHECK  := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages the tests and benchmarks run real programs from.
APT_PACKAGES := busybox-static poppler-utils coreutils bubblewrap runsc strace attr
TEST_TIMEOUT ?= 25m

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install the Debian packages that tests, demo and benchmarks use (needs root).
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "deps: run as root (sudo make ...) to install:$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

.PHONY: build
build: ## Build isolatord and isoctl into ./bin.
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: test
test: deps ## Run vet and the full test suite with the race detector (real /dev/kvm, fanotify).
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: bench
bench: deps build ## Run the benchmarks side by side with host, bwrap and runsc; see docs/BENCHMARKS.md.
	$(GO) test -run '^$$' -bench . -count 1 ./pkg/policy/
	$(GO) run ./internal/bench

.PHONY: lint
lint: ## gofmt, go vet and staticcheck.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

.PHONY: fuzz
fuzz: ## Run every fuzz target for 20s each.
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
		done; \
	done

.PHONY: demo
demo: deps build ## Start isolatord on embedded defaults in a temp dir and isolate sample files end to end.
	./scripts/demo.sh

.PHONY: install
install: build ## Install binaries, systemd unit and policies under $(DESTDIR)$(PREFIX).
	install -D -m 0755 $(BIN)/isolatord $(DESTDIR)$(PREFIX)/sbin/isolatord
	install -D -m 0755 $(BIN)/isoctl $(DESTDIR)$(PREFIX)/bin/isoctl
	install -D -m 0644 deploy/systemd/isolatord.service $(DESTDIR)/lib/systemd/system/isolatord.service
	install -d -m 0755 $(DESTDIR)/etc/isolator/policies.d

.PHONY: uninstall
uninstall: ## Remove what `make install` installed (policies.d is kept).
	rm -f $(DESTDIR)$(PREFIX)/sbin/isolatord $(DESTDIR)$(PREFIX)/bin/isoctl $(DESTDIR)/lib/systemd/system/isolatord.service

.PHONY: clean
clean: ## Remove build output.
	rm -rf $(BIN)
