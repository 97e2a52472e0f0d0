#!/usr/bin/env bash
# The demo: installs what is missing, builds spock, and runs it on local
# PostgreSQL 18 servers that are stopped again when the demo ends.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
install_extension --release
cargo run --quiet --release -p spock-tests --bin spock-demo
