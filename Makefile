# kasm — the commands a newcomer types: `make run` and `make test`.
#
# One cargo profile (dev, with optimized dependencies) serves build, run and test, so a
# clean machine compiles wasmtime once. `make bench` uses the release profile.

CARGO        ?= cargo
KASM         := target/debug/kasm
export KASM_CACHE_DIR ?= $(CURDIR)/target/kasm-cache

.PHONY: setup handlers build run demo test test-host test-e2e test-handlers test-ui lint fmt bench bench-tansu chaos soak fuzz attack clean

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

## test-e2e: the broker end-to-end suites only; KASM_TEST_BOOTSTRAP=host:port picks an external broker.
## The tests that need the embedded cluster's fault controls use it whatever the broker, and
## already ran in `make test`: skipped here.
EMBEDDED_ONLY := process::sigterm_with_every_broker_down_exits_within_the_drain_timeouts_and_loses_nothing \
  batches::publishes_refused_in_a_batch_hold_the_offset_before_the_first_unacknowledged_record \
  ledger::partitions_moving_between_three_hosts_repeat_no_recorded_event \
  ledger::sql_effects_committed_before_a_kill_that_lost_their_ledger_entries_apply_once \
  ledger::kv_writes_applied_before_a_kill_that_lost_their_ledger_entries_are_not_run_again
test-e2e: build
	KASM_TEST_BOOTSTRAP=$(KASM_TEST_BOOTSTRAP) $(CARGO) test -p kasm-tests --test all -- pipeline:: process:: admin services:: batches:: startup:: ledger:: \
	  $(foreach t,$(EMBEDDED_ONLY),--skip $(t))

test-handlers:
	$(CARGO) test --manifest-path handlers/Cargo.toml
	handlers/python/test.sh
	handlers/js/test.sh

## test-ui: the web console in headless Chromium (Debian's `chromium` package), driven by
## Playwright for Python against `kasm dev`; screenshots in target/ui-screenshots/
test-ui: build
	tests/ui/run.sh

## lint: formatting and clippy with warnings denied, host and handlers
lint: handlers
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path handlers/Cargo.toml --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path handlers/Cargo.toml --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path handlers/Cargo.toml --all

## bench: handler call benchmarks, then the pipeline side by side on the embedded cluster:
## throughput (baseline rdkafka, kasm's defaults and one-key variants, the audit handler, two
## aiokafka peers from PyPI: commit per batch and per message), latency at 10/1k/5k/50k
## records/s, the hot-swap pause, peak RSS; release build; numbers in BENCHMARKS.md
bench: handlers
	$(CARGO) build --release -p kasm-host --bins
	$(CARGO) bench -p kasm-host --bench invoke
	$(CARGO) bench -p kasm-tests --bench pipeline

## bench-tansu: the pipeline benchmark against Tansu (installed and started as in CI)
bench-tansu: handlers
	$(CARGO) build --release -p kasm-host --bins
	.ci/tansu.sh install
	@addr="$$(.ci/tansu.sh start | tail -n1)"; bootstrap="$${addr#KAFKA_BOOTSTRAP_SERVERS=}"; \
	  KASM_TEST_BOOTSTRAP="$$bootstrap" $(CARGO) bench -p kasm-tests --bench pipeline; rc=$$?; \
	  .ci/tansu.sh stop; exit $$rc

## chaos: the chaos campaign — the host as a process on the embedded cluster, faults of every
## kind at random moments (kills, SIGTERM, brokers down, request errors, slow round trips, leader
## moves, an unwritable DLQ, a second host, swaps), invariants checked after each round; summary
## in target/chaos/summary.txt; then the multi-host campaign (three hosts in one group on the
## Kafka ledger: SIGKILLs, rolling restarts, 3 → 1 → 3, wiped data folders; every run counted),
## summary in target/chaos/group-summary.txt. CHAOS_SEED replays a plan; CHAOS_ROUNDS,
## CHAOS_EVENTS, CHAOS_FAULTS (per round), CHAOS_SECONDS resize both. Short versions of both
## run in `make test`.
chaos: build
	$(CARGO) test -p kasm-tests --test all -- --ignored --exact chaos::full_campaign chaos::group_campaign --test-threads=1 --nocapture

## soak: an hour at a steady rate with swaps and faults, sampling the host's RSS and open fds
## into target/soak/samples.csv; fails unless growth levels off. SOAK_MINUTES shortens it. Not in CI.
soak: build
	$(CARGO) test -p kasm-tests --test all -- --ignored --exact chaos::soak_levels_off --nocapture

## fuzz: every fuzz target (fuzz/, cargo-fuzz + libFuzzer on the nightly toolchain) for
## FUZZ_SECONDS each, from its corpus, seeds and saved regressions. A crash stops the run and
## lands in fuzz/artifacts/<target>/: fix it, then keep the input in fuzz/regressions/<target>/
## (replayed by `make test`, tests/all/fuzz_regressions.rs). Own target folder: fuzz/target.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= record dlq_headers config admin_bodies
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build -s none
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  dict=""; [ -f fuzz/dict/$$t.dict ] && dict="-dict=dict/$$t.dict"; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  (cd fuzz && $(CARGO) +nightly fuzz run -s none $$t corpus/$$t seeds/$$t regressions/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 $$dict) || exit 1; \
	done

## attack: the admin API under attack: `kasm dev` on a random port with a random token, then
## schemathesis (PyPI, into target/attack/venv) against /openapi.json, every route without a
## valid token, 100 MiB and malformed uploads with the host's peak RSS; report in target/attack/
ATTACK_MAX_EXAMPLES ?= 100
attack: build
	@test -x target/attack/venv/bin/schemathesis || { python3 -m venv target/attack/venv \
	  && target/attack/venv/bin/pip install -q schemathesis; }
	ATTACK_MAX_EXAMPLES=$(ATTACK_MAX_EXAMPLES) target/attack/venv/bin/python tests/attack/admin_attack.py

clean:
	$(CARGO) clean
	rm -rf handlers/target handlers/dist
