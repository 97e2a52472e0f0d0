#!/usr/bin/env bash
# The end-to-end replication benchmark in one command (method: docs/benchmarks.md).
#
# 1. installs what is missing (scripts/setup.sh: PostgreSQL 18.6 under /opt/pg18,
#    cargo-pgrx, the server user; Debian's PostgreSQL 15 with pglogical 2.4);
# 2. copies PostgreSQL 18 to a private directory ($SPOCK_BENCH_PG, default
#    target/bench-pg18) and installs a release build of spock there: the shared
#    installation that the tests use is not touched;
# 3. builds the benchmark programs and runs replication-bench with SPOCK_PG_CONFIG
#    pointing at the private copy (full mode: about 20 minutes on 2 cores).
# Results: target/bench-results/replication.{md,json} and replication-*.svg.
#
# Arguments go to replication-bench, e.g. `bash scripts/bench.sh --quick` (smoke
# test, under 3 minutes) or `--rounds 3 --systems native,spock`.
# SPOCK_BENCH_SKIP_INSTALL=1: use $SPOCK_PG_CONFIG and the spock installed there as
# they are (no copy, no spock build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh

if ! dpkg -s postgresql-15-pglogical >/dev/null 2>&1; then
    SUDO=
    [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "[bench] installing Debian packages postgresql-15 and postgresql-15-pglogical" >&2
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends postgresql-15-pglogical >/dev/null; } \
        || echo "[bench] cannot install pglogical; replication-bench will skip it" >&2
fi

if [ "${SPOCK_BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    BENCH_PG="${SPOCK_BENCH_PG:-$PWD/target/bench-pg18}"
    # The embedded PostgreSQL finds its libraries relative to its prefix: copy all of it.
    if [ "${SPOCK_PG_CONFIG#"$SPOCK_PG18_PREFIX"/}" != "$SPOCK_PG_CONFIG" ]; then
        src="$SPOCK_PG18_PREFIX"
        rel="${SPOCK_PG_CONFIG#"$SPOCK_PG18_PREFIX"/}"
    else
        src="$(dirname "$(dirname "$SPOCK_PG_CONFIG")")"
        rel="bin/pg_config"
    fi
    if [ ! -x "$BENCH_PG/$rel" ] || [ "$("$BENCH_PG/$rel" --version)" != "$("$SPOCK_PG_CONFIG" --version)" ]; then
        echo "[bench] copying $src to $BENCH_PG" >&2
        rm -rf "$BENCH_PG"
        mkdir -p "$(dirname "$BENCH_PG")"
        cp -a "$src" "$BENCH_PG"
    fi
    export SPOCK_PG_CONFIG="$BENCH_PG/$rel"
    install_extension --release
    # the servers run as $SPOCK_RUN_USER
    chmod -R a+rX "$BENCH_PG"
fi

echo "[bench] building the benchmark programs" >&2
cargo build --quiet --release -p spock-benches --bins
exec target/release/replication-bench "$@"
