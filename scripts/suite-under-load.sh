#!/usr/bin/env bash
# Runs the integration suites (what scripts/test.sh runs as "unit and integration
# tests") several times in a row while a CPU-heavy job competes for the same cores,
# and reports each run's duration and result. It checks that the tests wait for
# events rather than for time: a test that passes only on an idle machine fails here.
#
#   bash scripts/suite-under-load.sh [runs (default 5)]
#
# The load is a release build of the whole workspace into a scratch target directory,
# started again each time it finishes, for as long as the runs last. One run without
# load comes first, as the baseline. Assumes scripts/test.sh (or scripts/setup.sh and
# install_extension) has run once on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
runs="${1:-5}"
scratch="$(mktemp -d /tmp/spock-load.XXXXXX)"
load_pid=""
cleanup() {
    if [ -n "$load_pid" ]; then
        kill -- "-$load_pid" 2>/dev/null || true
        wait "$load_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# Builds the test binaries first so that compiling them is not counted as a run.
cargo test --workspace --exclude spock --no-run --quiet

suite() { cargo test --workspace --exclude spock --no-fail-fast --quiet >"$scratch/run.log" 2>&1; }

results=()
failures=0
timed_run() {
    local label="$1" start end status=pass
    start=$(date +%s)
    if ! suite; then
        status=FAIL
        failures=$((failures + 1))
        cp "$scratch/run.log" "target/suite-under-load-$label.log"
        grep -E '^test .* FAILED|^---- |panicked' "$scratch/run.log" | head -20 >&2 || true
    fi
    end=$(date +%s)
    results+=("$label: $status in $((end - start)) s")
    echo "[load] $label: $status in $((end - start)) s" >&2
}

timed_run "baseline (no load)"

# The load: its own process group, so that cleanup stops the whole build.
setsid bash -c "while true; do cargo build --release --workspace --quiet --target-dir '$scratch/target' >/dev/null 2>&1; rm -rf '$scratch/target'; done" &
load_pid=$!
echo "[load] CPU load started (release build loop, pid $load_pid)" >&2

for i in $(seq 1 "$runs"); do
    timed_run "run $i under load"
done

printf '%s\n' "${results[@]}"
if [ "$failures" -gt 0 ]; then
    echo "[load] $failures run(s) failed; logs in target/suite-under-load-*.log" >&2
    exit 1
fi
echo "[load] every run passed" >&2
