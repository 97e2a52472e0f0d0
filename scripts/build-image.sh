#!/usr/bin/env bash
# Builds the spock CloudNativePG extension image without a container daemon.
#
#   bash scripts/build-image.sh                # build the libraries, stage the tree, write the image
#   bash scripts/build-image.sh --stage-only   # stop after out/spock-rootfs/ (for the Containerfile)
#   bash scripts/build-image.sh --tools-only   # only install what building (and the cnpg test) need
#
# Writes (out/ is not versioned):
#   out/spock-rootfs/        the image's file tree: lib/spock.so, lib/spock_output.so,
#                            share/extension/spock.control, share/extension/spock--*.sql,
#                            licenses/LICENSE
#   out/spock-oci/           OCI image layout, one linux/<host arch> image tagged $TAG
#   out/spock-oci.tar        the same layout as an oci-archive (for skopeo copy oci-archive:...)
#   out/spock-image.env      TAG, DIGEST, ARCHIVE, ... of the last build (KEY=value lines)
#   out/spock-build-args     --build-arg options that give a Containerfile build the same labels
#
# The image is byte-for-byte reproducible: building the same commit twice gives the same
# manifest digest (mtimes = SOURCE_DATE_EPOCH, default: time of the last commit; sorted
# entries owned by 0:0 with fixed modes; gzip without timestamp; canonical JSON).
# Config: USER 65532:65532, CNPG labels (PostgreSQL major, OS release of this machine).
#
# Environment: SPOCK_PG_CONFIG (pg_config of the PostgreSQL 18 to build against, see
# scripts/env.sh), SOURCE_DATE_EPOCH, SPOCK_IMAGE_OS (default: VERSION_CODENAME of this
# machine), SPOCK_IMAGE_TAG (default <version>-<pg major>-<os>), SPOCK_IMAGE_BASE (label
# io.cloudnativepg.image.base.name: the CNPG operand image the extension is for),
# SPOCK_IMAGE_STRIP=0 (keep debug info in the libraries; default strips it).
# Installs missing tools itself (apt-get); runs scripts/setup.sh when cargo-pgrx or
# PostgreSQL 18 are missing. Never installs anything into the PostgreSQL installation.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/env.sh

MODE=build
case "${1:-}" in
    "") ;;
    --stage-only) MODE=stage ;;
    --tools-only) MODE=tools ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

log() { printf '[build-image] %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------

# Building: python3 (the OCI writer uses only its standard library), objcopy (binutils),
# git (SOURCE_DATE_EPOCH, revision label). The cnpg test needs nothing more: its
# manifest and image checks are Rust (tests/cnpg/), oci-unpack.py is standard library.
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v objcopy >/dev/null 2>&1 || apt_install binutils
command -v git >/dev/null 2>&1 || apt_install git
if [ "$MODE" = tools ]; then
    log "tools ready"
    exit 0
fi

if [ ! -x "$SPOCK_PG_CONFIG" ] || ! cargo pgrx --version >/dev/null 2>&1; then
    log "PostgreSQL 18 or cargo-pgrx missing: running scripts/setup.sh"
    bash scripts/setup.sh
fi

# --- what we build ---------------------------------------------------------
case "$(uname -m)" in
    x86_64|amd64) ARCH=amd64 ;;
    aarch64|arm64) ARCH=arm64 ;;
    *) echo "build-image.sh: unsupported architecture $(uname -m) (amd64, arm64)" >&2; exit 2 ;;
esac
PG_VERSION="$("$SPOCK_PG_CONFIG" --version)"          # "PostgreSQL 18.6"
PG_MAJOR="$(echo "$PG_VERSION" | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
OS="${SPOCK_IMAGE_OS:-$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")}"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
SOURCE="$(sed -nE 's/^repository *= *"(.*)"/\1/p' Cargo.toml | head -1)"
BASE="${SPOCK_IMAGE_BASE:-ghcr.io/cloudnative-pg/postgresql:${PG_MAJOR}-minimal-${OS}}"
OUT="$ROOT/out"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$OUT"

# --- build -----------------------------------------------------------------
log "building spock (cargo pgrx package, release) against $PG_VERSION"
rm -rf "$OUT/spock-pkg"
cargo pgrx package -p spock --pg-config "$SPOCK_PG_CONFIG" --out-dir "$OUT/spock-pkg" >/dev/null
log "building spock_output (cargo build --release -p spock-output)"
cargo build --quiet --release -p spock-output
PKGLIB="$OUT/spock-pkg$("$SPOCK_PG_CONFIG" --pkglibdir)"
PKGEXT="$OUT/spock-pkg$("$SPOCK_PG_CONFIG" --sharedir)/extension"
for f in "$PKGLIB/spock.so" "$PKGEXT/spock.control" "$TARGET_DIR/release/libspock_output.so"; do
    [ -f "$f" ] || { echo "build-image.sh: $f was not built" >&2; exit 1; }
done
SQL_VERSION="$(sed -nE "s/^default_version *= *'(.*)'/\1/p" "$PKGEXT/spock.control")"
# The tag carries spock-rs's own release (the workspace version); the SQL version is
# the Spock API level (6.0.0), the same for several spock-rs releases.
RS_VERSION="$(sed -nE 's/^version *= *"(.*)"/\1/p' Cargo.toml | head -1)"
TAG="${SPOCK_IMAGE_TAG:-${RS_VERSION}-${PG_MAJOR}-${OS}}"

# --- stage the tree --------------------------------------------------------
ROOTFS="$OUT/spock-rootfs"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/lib" "$ROOTFS/share/extension" "$ROOTFS/licenses"
copy_lib() {
    if [ "${SPOCK_IMAGE_STRIP:-1}" = 0 ]; then
        cp "$1" "$2"
    else
        objcopy --strip-debug "$1" "$2"
    fi
    chmod 0755 "$2"
}
copy_lib "$PKGLIB/spock.so" "$ROOTFS/lib/spock.so"
copy_lib "$TARGET_DIR/release/libspock_output.so" "$ROOTFS/lib/spock_output.so"
install -m 0644 "$PKGEXT/spock.control" "$PKGEXT"/spock--*.sql "$ROOTFS/share/extension/"
install -m 0644 scripts/image/LICENSE "$ROOTFS/licenses/LICENSE"
find "$ROOTFS" -type d -exec chmod 0755 {} +
find "$ROOTFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
# The labels; the Containerfile sets the same ones from these build arguments.
ARGS=(
    "BASE_IMAGE=$BASE" "PG_MAJOR=$PG_MAJOR" "OS=$OS" "VERSION=$SQL_VERSION" "SQL_VERSION=$SQL_VERSION"
    "REVISION=$REVISION" "CREATED=$CREATED" "SOURCE=$SOURCE"
)
printf -- '--build-arg %s\n' "${ARGS[@]}" >"$OUT/spock-build-args"
if [ "$MODE" = stage ]; then
    log "staged $ROOTFS; build-args in $OUT/spock-build-args"
    exit 0
fi

# --- the OCI image -----------------------------------------------------------
DIGEST="$(python3 scripts/image/oci-build.py \
    --rootfs "$ROOTFS" --layout "$OUT/spock-oci" --archive "$OUT/spock-oci.tar" \
    --tag "$TAG" --arch "$ARCH" --epoch "$SOURCE_DATE_EPOCH" --user 65532:65532 \
    --label "io.cloudnativepg.image.base.name=$BASE" \
    --label "io.cloudnativepg.image.base.pgmajor=$PG_MAJOR" \
    --label "io.cloudnativepg.image.base.os=$OS" \
    --label "io.cloudnativepg.image.sql.version=$SQL_VERSION" \
    --label "org.opencontainers.image.base.name=scratch" \
    --label "org.opencontainers.image.title=spock" \
    --label "org.opencontainers.image.description=spock-rs: active-active logical replication for PostgreSQL (CloudNativePG extension image)" \
    --label "org.opencontainers.image.version=$SQL_VERSION" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.created=$CREATED" \
    --label "org.opencontainers.image.source=$SOURCE" \
    --label "org.opencontainers.image.licenses=PostgreSQL")"

LAYER_BYTES="$(python3 - "$OUT/spock-oci" <<'EOF'
import json, os, sys
root = sys.argv[1]
idx = json.load(open(os.path.join(root, "index.json")))
blob = lambda d: os.path.join(root, "blobs", *d["digest"].split(":"))
man = json.load(open(blob(idx["manifests"][0])))
print(sum(l["size"] for l in man["layers"]))
EOF
)"
cat >"$OUT/spock-image.env" <<EOF
TAG=$TAG
DIGEST=$DIGEST
ARCH=$ARCH
PG_MAJOR=$PG_MAJOR
OS=$OS
SQL_VERSION=$SQL_VERSION
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH
LAYOUT=$OUT/spock-oci
ARCHIVE=$OUT/spock-oci.tar
ROOTFS=$ROOTFS
LAYER_BYTES=$LAYER_BYTES
EOF
log "image linux/$ARCH $TAG: manifest $DIGEST, compressed layer $LAYER_BYTES bytes"
log "  layout:  out/spock-oci:$TAG"
log "  archive: out/spock-oci.tar (skopeo copy oci-archive:out/spock-oci.tar:$TAG docker://REGISTRY/spock:$TAG)"
echo "$DIGEST"
