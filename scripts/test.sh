#!/usr/bin/env bash
# Every test: installs what is missing, builds and installs spock, then runs
#  - spock-core unit and property tests (no PostgreSQL needed),
#  - the multi-node integration tests on real PostgreSQL 18 servers (tests/),
#  - the #[pg_test]s inside a server (cargo pgrx test),
#  - smoke runs of the benchmarks (micro-benchmarks once each, decode benchmark in
#    quick mode; no timing asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
install_extension ""

echo "[spock] unit and integration tests" >&2
cargo test --workspace --exclude spock

echo "[spock] benchmark smoke runs (no timing is asserted)" >&2
cargo bench -p spock-benches -- --test
cargo run --quiet -p spock-benches --bin decode-bench -- --quick
cargo run --quiet --release -p spock-benches --bin replication-bench -- --quick --systems native,spock --out target/bench-results/ci

echo "[spock] tests inside PostgreSQL (cargo pgrx test)" >&2
PGRX_TEST_DATA="$(mktemp -d /tmp/spock-pgrx-test.XXXXXX)"
trap 'rm -rf "$PGRX_TEST_DATA"' EXIT
chown "$SPOCK_RUN_USER" "$PGRX_TEST_DATA"
cargo pgrx test pg18 -p spock --runas "$SPOCK_RUN_USER" --pgdata "$PGRX_TEST_DATA/data"
