#!/usr/bin/env bash
# The long convergence check with faults (tests/src/bin/mesh-faults.rs): three
# local PostgreSQL 18 nodes in a full spock mesh, pgbench on each, immediate stops,
# terminated walsenders and apply workers, subscription toggles; after each round,
# divergent keys and lost or duplicated rows. Installs what it needs first.
#
#   bash scripts/mesh-faults.sh [--rounds N] [--secs S] [--keys K] [--seed X]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
install_extension --release
exec cargo run --release --quiet -p spock-tests --bin mesh-faults -- "$@"
