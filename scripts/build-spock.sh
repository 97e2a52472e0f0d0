#!/usr/bin/env bash
# Builds pgEdge Spock (for the mixed-cluster tests, tests/tests/spock_interop.rs, and
# scripts/spock-regress.sh): Spock needs a PostgreSQL built from source with its
# patches (patches/<major>/ in Spock's repository), so this script builds both into
# one prefix. Nothing of it is needed to build or run spock-rs.
#
#   scripts/build-spock.sh SPOCK_CHECKOUT [PG_SOURCE] [PREFIX]
#
#   SPOCK_CHECKOUT  a checkout of pgEdge Spock (tested with 6.0.0, commit fd2c484a)
#   PG_SOURCE       a PostgreSQL 18 source tree or release tarball (.tar.bz2/.tar.gz);
#                   default: Debian's postgresql-18 source package, downloaded with
#                   `apt-get source` from the Debian mirror this machine's apt already
#                   uses (its deb-src indexes of sid and forky carry 18.x)
#   PREFIX          where to install; default /opt/spock-build/pg18-spock
#
# Afterwards: SPOCK_TEST_SPOCK_BINDIR=$PREFIX/bin runs the mixed-cluster tests
# (cargo test -p spock-tests --test spock_interop). The build runs as root (needs
# bison and flex, installed here from Debian) and takes ~10 minutes on 2 cores.
set -euo pipefail

SPOCK_SRC="$(cd "${1:?usage: scripts/build-spock.sh SPOCK_CHECKOUT [PG_SOURCE] [PREFIX]}" && pwd)"
PG_SOURCE="${2:-}"
PREFIX="${3:-/opt/spock-build/pg18-spock}"
WORK="$(dirname "$PREFIX")"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
log() { echo "[build-spock] $*" >&2; }

[ -d "$SPOCK_SRC/patches" ] || { echo "build-spock.sh: $SPOCK_SRC has no patches/: not a Spock checkout" >&2; exit 2; }
apt_install bison flex build-essential libreadline-dev zlib1g-dev libicu-dev libssl-dev pkg-config
mkdir -p "$WORK"

# --- the PostgreSQL source -------------------------------------------------
if [ -z "$PG_SOURCE" ]; then
    # Debian's source package, through apt, with the host of this machine's own
    # configured Debian mirror; the system's apt configuration is left as it is.
    APTDIR="$WORK/apt"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$WORK/src"
    MIRROR="$(grep -rhoE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | awk '{print $2}' | head -1 || true)"
    [ -n "$MIRROR" ] || { echo "build-spock.sh: no Debian mirror in /etc/apt; give PG_SOURCE" >&2; exit 2; }
    for suite in sid forky; do
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main"
    done > "$APTDIR/sources.list"
    APTOPT=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache")
    log "downloading Debian's postgresql-18 source package"
    apt-get "${APTOPT[@]}" -qq update
    (cd "$WORK/src" && apt-get "${APTOPT[@]}" -qq source --download-only postgresql-18 2>&1 | grep -v unsandboxed || true)
    PG_SOURCE="$(ls "$WORK"/src/postgresql-18_*.orig.tar.bz2 | sort -V | tail -1)"
fi
if [ -f "$PG_SOURCE" ]; then
    log "unpacking $PG_SOURCE"
    rm -rf "$WORK/pg-src" && mkdir -p "$WORK/pg-src"
    tar -xf "$PG_SOURCE" -C "$WORK/pg-src" --strip-components=1
    PG_TREE="$WORK/pg-src"
else
    # A tree given by the user is copied: the patches must not touch it.
    rm -rf "$WORK/pg-src" && cp -a "$PG_SOURCE" "$WORK/pg-src"
    PG_TREE="$WORK/pg-src"
fi
PG_MAJOR="$(sed -nE "s/^PACKAGE_VERSION='([0-9]+)\..*/\1/p" "$PG_TREE/configure")"
log "PostgreSQL $(sed -nE "s/^PACKAGE_VERSION='(.*)'/\1/p" "$PG_TREE/configure") with Spock's patches/$PG_MAJOR"

# --- patch, build, install --------------------------------------------------
for p in "$SPOCK_SRC"/patches/"$PG_MAJOR"/*.diff; do
    log "applying $(basename "$p")"
    patch -s -p1 -d "$PG_TREE" < "$p"
done
cd "$PG_TREE"
./configure --quiet --prefix="$PREFIX" --with-icu --with-openssl >/dev/null
nice make -s -j"$(nproc)" >/dev/null
make -s install >/dev/null
nice make -s -C contrib/dblink install >/dev/null
log "building Spock"
rm -rf "$WORK/spock-src" && cp -a "$SPOCK_SRC" "$WORK/spock-src"
nice make -s -C "$WORK/spock-src" PG_CONFIG="$PREFIX/bin/pg_config" -j"$(nproc)" >/dev/null
make -s -C "$WORK/spock-src" PG_CONFIG="$PREFIX/bin/pg_config" install >/dev/null
# Servers run as an unprivileged user: the installation must be readable by it.
chmod -R a+rX "$PREFIX"
log "done: $PREFIX ($("$PREFIX/bin/postgres" --version); spock $(sed -nE 's/.*SPOCK_VERSION +"(.*)".*/\1/p' "$SPOCK_SRC/include/spock.h" 2>/dev/null || echo '?'))"
echo "SPOCK_TEST_SPOCK_BINDIR=$PREFIX/bin"
