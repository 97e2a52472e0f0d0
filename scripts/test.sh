#!/usr/bin/env bash
# Every test: installs what is missing, builds and installs spock, then checks the
# formatting (rustfmt) and lints (clippy, warnings are errors) and runs
#  - spock-core unit and property tests (no PostgreSQL needed),
#  - the multi-node integration tests on real PostgreSQL 18 servers (tests/), once
#    with serial apply and once with four parallel apply writers per subscription,
#  - the #[pg_test]s inside a server (cargo pgrx test),
#  - smoke runs of the benchmarks (micro-benchmarks once each, decode benchmark in
#    quick mode; no timing asserted).
# A failing step does not stop the later ones (nor does a failing test binary stop
# the other binaries: --no-fail-fast); the script exits non-zero if anything failed
# and lists what.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
install_extension ""

failed=()
# Runs one step ("$1" names it), remembering a failure instead of stopping.
step() {
    local name="$1"
    shift
    echo "[spock] $name" >&2
    if ! "$@"; then
        echo "[spock] FAILED: $name" >&2
        failed+=("$name")
    fi
}

step "format (cargo fmt --check; rustfmt.toml)" cargo fmt --all -- --check
step "lints (cargo clippy, warnings are errors)" cargo clippy --workspace --all-targets -- -D warnings
step "unit and integration tests" cargo test --workspace --exclude spock --no-fail-fast
# The integration tests again with every subscription applying through four
# parallel writers (spock.parallel_apply_workers = 4 on every test server).
step "integration tests with 4 parallel apply writers" \
    env SPOCK_TEST_PARALLEL_APPLY=4 cargo test -p spock-tests --no-fail-fast
step "benchmark smoke: micro-benchmarks (no timing is asserted)" cargo bench -p spock-benches -- --test
step "benchmark smoke: decode-bench" cargo run --quiet -p spock-benches --bin decode-bench -- --quick
step "benchmark smoke: replication-bench" \
    cargo run --quiet --release -p spock-benches --bin replication-bench -- --quick --systems native,spock --out target/bench-results/ci

PGRX_TEST_DATA="$(mktemp -d /tmp/spock-pgrx-test.XXXXXX)"
trap 'rm -rf "$PGRX_TEST_DATA"' EXIT
chown "$SPOCK_RUN_USER" "$PGRX_TEST_DATA"
step "tests inside PostgreSQL (cargo pgrx test)" \
    cargo pgrx test pg18 -p spock --runas "$SPOCK_RUN_USER" --pgdata "$PGRX_TEST_DATA/data"

if [ ${#failed[@]} -gt 0 ]; then
    printf '[spock] %d step(s) failed:\n' "${#failed[@]}" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "[spock] every test passed" >&2
