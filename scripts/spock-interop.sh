#!/usr/bin/env bash
# Mixed clusters of pgEdge Spock and spock-rs nodes (tests/tests/spock_interop.rs):
# builds Spock on a patched PostgreSQL 18 once (scripts/build-spock.sh; ~10 minutes
# on 2 cores), installs spock-rs into this machine's PostgreSQL 18, and runs the
# mixed-cluster tests against that build. Nothing here is part of `scripts/test.sh`:
# the tests there skip the mixed clusters (with a printed reason) unless
# SPOCK_TEST_SPOCK_BINDIR names a Spock build.
#
#   scripts/spock-interop.sh SPOCK_CHECKOUT [PREFIX]
#
#   SPOCK_CHECKOUT  a checkout of pgEdge Spock (tested with 6.0.0, commit fd2c484a)
#   PREFIX          where Spock is (or gets) installed; default /opt/spock-build/pg18-spock
#
# A PREFIX that already holds a Spock build is used as it is; remove it to rebuild.
set -euo pipefail

SPOCK_SRC="${1:?usage: scripts/spock-interop.sh SPOCK_CHECKOUT [PREFIX]}"
PREFIX="${2:-/opt/spock-build/pg18-spock}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if [ ! -x "$PREFIX/bin/pg_config" ] || [ ! -f "$("$PREFIX/bin/pg_config" --pkglibdir)/spock.so" ]; then
    bash scripts/setup.sh
    bash scripts/build-spock.sh "$SPOCK_SRC" "" "$PREFIX"
else
    echo "[spock-interop] using the Spock build in $PREFIX" >&2
    bash scripts/setup.sh
fi
# shellcheck source=scripts/env.sh
. scripts/env.sh
install_extension ""
SPOCK_TEST_SPOCK_BINDIR="$PREFIX/bin" cargo test -p spock-tests --test spock_interop -- --test-threads=1
