# kasm — the commands a newcomer types: `make run` and `make test`.
#
# One cargo profile (dev, with optimized dependencies) serves build, run and test, so a
# clean machine compiles wasmtime once. `make bench` uses the release profile.

CARGO        ?= cargo
KASM         := target/debug/kasm
export KASM_CACHE_DIR ?= $(CURDIR)/target/kasm-cache

.PHONY: setup handlers build run demo test test-host test-e2e test-handlers lint fmt bench clean

## setup: add the wasm32-wasip2 target that handlers are built for
setup:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
	  || rustup target add wasm32-wasip2 \
	  || { echo "error: could not add the Rust target wasm32-wasip2 (rustup target add wasm32-wasip2 failed);" \
	            "kasm handlers are built for it. Check that rustup can reach its download server." >&2; exit 1; }

## handlers: build the four handlers and the test fixtures into handlers/dist/
handlers: setup
	handlers/build.sh

## build: the kasm binary and the handlers
build: handlers
	$(CARGO) build -p kasm-host --bins

## run: the task app on an embedded Kafka cluster, demo events and a live view (Ctrl-C stops)
run: build
	$(KASM) dev

## demo: each handler's inner loop on its demo event (kasm invoke: no Kafka at all). The
## notification handler posts to a webhook; nothing listens on 127.0.0.1:9, so its call ends
## `retryable` (connection refused) — `make run` shows deliveries to a real receiver.
demo: build
	@for pair in recurring:task-events audit:task-events live-updates:task-updates; do \
	  h=$${pair%%:*}; t=$${pair#*:}; \
	  echo "== $$h (record from topic $$t)"; \
	  extra=""; [ -d handlers/$$h/migrations ] && extra="--migrations handlers/$$h/migrations"; \
	  $(KASM) invoke handlers/dist/$$h.wasm handlers/$$h/demo/event.json --name $$h --topic $$t $$extra || exit 1; \
	  echo; \
	done
	@echo "== notification (record from topic reminders; webhook http://127.0.0.1:9/hook, nothing listening)"
	@$(KASM) invoke handlers/dist/notification.wasm handlers/notification/demo/event.json --name notification \
	  --topic reminders --setting webhook_url=http://127.0.0.1:9/hook || true

## test: everything: host unit tests, end-to-end tests, handler logic tests
test: build test-host test-handlers

test-host:
	$(CARGO) test --workspace

## test-e2e: the broker end-to-end suites only; KASM_TEST_BOOTSTRAP=host:port picks an external broker
test-e2e: build
	KASM_TEST_BOOTSTRAP=$(KASM_TEST_BOOTSTRAP) $(CARGO) test -p kasm-tests --test all -- pipeline:: process:: admin services::

test-handlers:
	$(CARGO) test --manifest-path handlers/Cargo.toml

## lint: formatting and clippy with warnings denied, host and handlers
lint:
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path handlers/Cargo.toml --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path handlers/Cargo.toml --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path handlers/Cargo.toml --all

## bench: handler call benchmarks and pipeline throughput side by side (baseline rdkafka,
## kasm, the aiokafka peer from PyPI), release build; numbers go in BENCHMARKS.md
bench: handlers
	$(CARGO) build --release -p kasm-host --bins
	$(CARGO) bench -p kasm-host --bench invoke
	$(CARGO) bench -p kasm-host --bench pipeline

clean:
	$(CARGO) clean
	rm -rf handlers/target handlers/dist
