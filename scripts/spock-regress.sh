#!/usr/bin/env bash
# Runs pgEdge Spock's own regression suite (tests/regress of Spock's repository)
# against spock-rs, the way Spock's `make regresscheck` does, and reports which
# tests pass.
#
# Usage: scripts/spock-regress.sh [options] /path/to/spock-checkout [test ...]
#
#   /path/to/spock-checkout  a checkout of pgEdge Spock (nothing is fetched and
#                            nothing in it is modified; its tests/regress/{sql,
#                            expected}, regress-*.conf and the REGRESS list of its
#                            Makefile are used as they are)
#   test ...                 run only these tests, in the order given (most tests
#                            depend on init having run before them); default: the
#                            whole schedule, in the Makefile's order
# Options:
#   --out DIR                where results, diffs and the server log go
#                            (default: a new /tmp/spock-regress.XXXXXX)
#   --statement-timeout S    cancel a statement of a test that has been running for
#                            S seconds (default 60; Spock's waits take seconds when
#                            replication works, so a hang becomes an error in the
#                            diff instead of stopping the run)
#   --test-timeout S         end a test's sessions once it has run S seconds
#                            (default 600)
#   --keep                   leave the data directory in the output directory
#   --strict                 exit 1 unless every test passed
#
# How Spock runs the suite (its Makefile, target regresscheck): pg_regress makes ONE
# temporary instance with --temp-config tests/regress/regress-postgresql.conf (plus
# regress-output-plugin.conf when the server knows output_plugin_libraries),
# --dbname=regression and --create-role=logical, and runs the REGRESS list in order.
# The "nodes" are databases of that one instance (spock.provider_dsn='dbname=
# regression', spock.subscriber_dsn='dbname=postgres', spock.provider1_dsn=
# 'dbname=regression1', spock.orig_provider_dsn='dbname=sourcedb'): the DSNs carry
# no host or port, so the backends' own libpq connections (subscriptions, dblink)
# reach the same instance through the PGHOST/PGPORT the postmaster inherited from
# pg_regress.
#
# This script sets up the same instance itself (so that it can choose the port, run
# the server as an unprivileged user, watch for hangs and always stop it) and then
# runs pg_regress once per test against it: the first run creates the regression
# database and the role "logical" exactly as pg_regress does, the later ones use
# --use-existing. pg_regress's comparison (alternative expected files *_N.out
# included) decides pass or fail.
#
# It prints "PASS name" / "FAIL name" per test and "N/M passed", and exits 0 once
# the suite ran (1 with --strict and a failure, 2 if it could not run).
set -euo pipefail

# --- Settings shared with the other scripts (SPOCK_PG_CONFIG, SPOCK_RUN_USER) ---
REPO="$(cd "$(dirname "$0")/.." && pwd)"
source "$REPO/scripts/env.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    exit 2
}

# --- Command line ---
OUT=""
STMT_TIMEOUT=60
TEST_TIMEOUT=600
KEEP=0
STRICT=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#*=}"; shift ;;
        --statement-timeout) STMT_TIMEOUT="$2"; shift 2 ;;
        --statement-timeout=*) STMT_TIMEOUT="${1#*=}"; shift ;;
        --test-timeout) TEST_TIMEOUT="$2"; shift 2 ;;
        --test-timeout=*) TEST_TIMEOUT="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        --strict) STRICT=1; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
[ ${#ARGS[@]} -ge 1 ] || usage
SPOCK_SRC="$(cd "${ARGS[0]}" && pwd)"
REQUESTED=("${ARGS[@]:1}")
REGRESS_DIR="$SPOCK_SRC/tests/regress"
[ -d "$REGRESS_DIR/sql" ] && [ -d "$REGRESS_DIR/expected" ] ||
    { echo "$SPOCK_SRC has no tests/regress/{sql,expected}" >&2; exit 2; }

# --- The PostgreSQL 18 installation and its pg_regress ---
PG_CONFIG="$SPOCK_PG_CONFIG"
BINDIR="$("$PG_CONFIG" --bindir)"
PG_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
[ -x "$PG_REGRESS" ] || { echo "no pg_regress at $PG_REGRESS" >&2; exit 2; }
RUN_USER="$SPOCK_RUN_USER"
id "$RUN_USER" >/dev/null 2>&1 || { echo "no user $RUN_USER to run the server as" >&2; exit 2; }

# Runs "$@" as the unprivileged server user (runuser as root, sudo otherwise).
as_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$RUN_USER" -- "$@"
    elif [ "$(id -un)" = "$RUN_USER" ]; then
        "$@"
    else
        sudo -n -u "$RUN_USER" -- "$@"
    fi
}

# --- The schedule: Spock's Makefile REGRESS list, after its own filter-outs ---
# make evaluates the list exactly as `make regresscheck` would (it drops add_table,
# and conflict_stat before PostgreSQL 18); only a print target is added, through a
# second makefile read from a pipe, so the checkout is not touched.
schedule() {
    local list
    if list="$(make -s --no-print-directory -C "$SPOCK_SRC" PG_CONFIG="$PG_CONFIG" \
        -f Makefile -f <(printf 'spock-regress-print-schedule:\n\t@echo $(REGRESS)\n') \
        spock-regress-print-schedule 2>/dev/null)" && [ -n "$list" ]; then
        echo "$list"
        return
    fi
    # Without make (or if the Makefile cannot be evaluated): read the REGRESS = ...
    # continuation lines and apply the unconditional filter-out lines.
    awk '
        /^REGRESS[ \t]*=/ { on = 1; sub(/^REGRESS[ \t]*=/, "") }
        on { line = $0; cont = sub(/\\[ \t]*$/, "", line); printf "%s ", line; if (!cont) on = 0 }
    ' "$SPOCK_SRC/Makefile" |
        tr -s ' \t' '\n' | grep -v '^$' |
        grep -vxF -f <(sed -n 's/^REGRESS := $(filter-out \([a-z_ ]*\), $(REGRESS))$/\1/p' "$SPOCK_SRC/Makefile" |
                        tr ' ' '\n' | grep -v '^$'; echo '#none#') | tr '\n' ' '
}
read -r -a SCHEDULE <<<"$(schedule)"
[ ${#SCHEDULE[@]} -gt 0 ] || { echo "could not read the REGRESS list of $SPOCK_SRC/Makefile" >&2; exit 2; }
if [ ${#REQUESTED[@]} -gt 0 ]; then
    TESTS=("${REQUESTED[@]}")
else
    TESTS=("${SCHEDULE[@]}")
fi
for t in "${TESTS[@]}"; do
    [ -f "$REGRESS_DIR/sql/$t.sql" ] || { echo "no test $t in $REGRESS_DIR/sql" >&2; exit 2; }
done

# --- Output directory (owned by the server user, who writes the results) ---
if [ -z "$OUT" ]; then
    OUT="$(mktemp -d /tmp/spock-regress.XXXXXX)"
else
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
    rm -rf "$OUT/data" "$OUT/run" "$OUT/results" "$OUT/diffs"
fi
mkdir -p "$OUT/run" "$OUT/results" "$OUT/diffs"
: >"$OUT/summary.txt"
: >"$OUT/cancelled.log"
# A short socket directory of its own (unix socket paths are limited to ~100 bytes).
SOCKDIR="$(mktemp -d /tmp/spkrg.XXXXXX)"
chown -R "$RUN_USER" "$OUT" "$SOCKDIR" 2>/dev/null || true
chmod 0755 "$OUT"
DATA="$OUT/data"
LOG="$OUT/postmaster.log"

# --- A free port for this run (also names the unix socket) ---
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
PORT=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! port_in_use "$p" && [ ! -e "/tmp/.s.PGSQL.$p" ]; then PORT="$p"; break; fi
done
[ -n "$PORT" ] || { echo "no free port found" >&2; exit 2; }

# --- The environment pg_regress gives its clients AND the postmaster it starts ---
# (temp-instance mode starts the postmaster from its own environment): the backends'
# libpq connections for the host-less DSNs find the server through PGHOST/PGPORT,
# and see the same PGTZ/PGDATESTYLE/PGOPTIONS/LC_MESSAGES as under make regresscheck.
PG_ENV=(
    PATH="$BINDIR:/usr/bin:/bin"
    LANG=C.UTF-8 LC_MESSAGES=C
    PGHOST="$SOCKDIR" PGPORT="$PORT"
    PGTZ=PST8PDT PGDATESTYLE="Postgres, MDY"
    PGOPTIONS="-c intervalstyle=postgres_verbose"
    PGAPPNAME=pg_regress
)

# --- Clean shutdown, also on failure or interruption ---
REGRESS_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A pg_regress still running (interrupted run): end its process group (it was
    # started with setsid, so the group is exactly pg_regress and its psql).
    if [ -n "$REGRESS_PID" ] && kill -0 "$REGRESS_PID" 2>/dev/null; then
        kill -TERM -- "-$REGRESS_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$REGRESS_PID" 2>/dev/null || true
    fi
    # The server: fast shutdown, immediate if that does not finish in time.
    if [ -f "$DATA/postmaster.pid" ]; then
        as_user env "${PG_ENV[@]}" pg_ctl -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_user env "${PG_ENV[@]}" pg_ctl -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$SOCKDIR"
    [ "$KEEP" -eq 1 ] || rm -rf "$DATA"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The instance: what pg_regress --temp-instance would make ---
# initdb as pg_regress runs it (UTF8, C locale as our other test servers use).
as_user env "${PG_ENV[@]}" initdb -D "$DATA" -E UTF8 --no-locale --no-sync --no-instructions \
    >"$OUT/initdb.log" 2>&1 || { cat "$OUT/initdb.log" >&2; exit 2; }
{
    # The lines pg_regress appends to every temporary instance...
    printf '\n# Configuration added by pg_regress\n\n'
    printf 'log_autovacuum_min_duration = 0\nlog_checkpoints = on\n'
    printf "log_line_prefix = '%%m %%b[%%p] %%q%%a '\nlog_lock_waits = on\n"
    printf 'log_temp_files = 128kB\nmax_prepared_transactions = 2\n'
    # ...then Spock's --temp-config files, unchanged and in Makefile order (the
    # output-plugin one only where the server has output_plugin_libraries, which
    # PostgreSQL 18.6 has and which spock_output needs)...
    printf '\n# %s\n' "$REGRESS_DIR/regress-postgresql.conf"
    cat "$REGRESS_DIR/regress-postgresql.conf"
    if "$BINDIR/postgres" --describe-config 2>/dev/null | grep -q '^output_plugin_libraries'; then
        printf '\n# %s\n' "$REGRESS_DIR/regress-output-plugin.conf"
        cat "$REGRESS_DIR/regress-output-plugin.conf"
    fi
    # ...and where to listen: only the private unix socket, on the chosen port
    # (pg_regress's temp instance also listens on a unix socket only).
    printf "\n# spock-regress.sh\nlisten_addresses = ''\nunix_socket_directories = '%s'\nport = %s\n" \
        "$SOCKDIR" "$PORT"
} >>"$DATA/postgresql.conf"
# Start it, niced (the machine is shared), with pg_regress's environment, from the
# checkout's top directory as `make regresscheck` does: regress-postgresql.conf names
# hba_file = './tests/regress/regress-pg_hba.conf', which the server resolves
# against the directory it was started from.
echo "[spock-regress] PostgreSQL $("$PG_CONFIG" --version | sed 's/[^0-9.]//g') in $DATA, socket $SOCKDIR port $PORT" >&2
if ! (cd "$SPOCK_SRC" && as_user env "${PG_ENV[@]}" nice -n 10 pg_ctl -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null); then
    echo "the server did not start; the end of $LOG:" >&2
    tail -20 "$LOG" >&2
    exit 2
fi

# Runs one SQL command as the superuser in database postgres; prints the rows.
admin_sql() {
    as_user env "${PG_ENV[@]}" PGAPPNAME=spock-regress-watchdog \
        psql -X -q -A -t -d postgres -c "$1" 2>/dev/null || true
}

# --- The tests, one pg_regress run each, in order ---
echo "[spock-regress] ${#TESTS[@]} test(s); results in $OUT" >&2
passed=0
failed=()
first=1
server_down=0
for t in "${TESTS[@]}"; do
    # After the server went away the remaining tests cannot run: count them failed.
    if [ "$server_down" -eq 1 ]; then
        echo "FAIL $t (not run: the server is down)" | tee -a "$OUT/summary.txt"
        failed+=("$t")
        continue
    fi
    start=$(date +%s)
    opts=(--bindir="$BINDIR" --inputdir="$REGRESS_DIR" --outputdir="$OUT/run"
          --dbname=regression --host="$SOCKDIR" --port="$PORT")
    if [ "$first" -eq 1 ]; then
        # The first run sets up the database "regression" and the role "logical" as
        # pg_regress does for a fresh instance.
        opts+=(--create-role=logical)
    else
        opts+=(--use-existing)
    fi
    first=0
    # setsid: pg_regress and its psql get a process group of their own to end on
    # timeout or interruption.
    as_user env "${PG_ENV[@]}" setsid nice -n 10 "$PG_REGRESS" "${opts[@]}" "$t" \
        >"$OUT/run/$t.log" 2>&1 &
    REGRESS_PID=$!

    # While it runs: cancel any of its statements running longer than the statement
    # timeout; past the test timeout end its sessions, and a minute later the
    # pg_regress run itself.
    cancelled=0
    killed=""
    while kill -0 "$REGRESS_PID" 2>/dev/null; do
        sleep 3
        now=$(date +%s)
        rows="$(admin_sql "SELECT pid, pg_cancel_backend(pid), left(regexp_replace(query, '\s+', ' ', 'g'), 300)
            FROM pg_stat_activity
            WHERE backend_type = 'client backend' AND application_name = 'pg_regress/$t'
              AND state = 'active' AND now() - query_start > interval '$STMT_TIMEOUT seconds'")"
        if [ -n "$rows" ]; then
            cancelled=$((cancelled + $(grep -c . <<<"$rows")))
            sed "s/^/$t: cancelled after ${STMT_TIMEOUT}s: /" <<<"$rows" >>"$OUT/cancelled.log"
        fi
        if [ $((now - start)) -gt "$TEST_TIMEOUT" ]; then
            killed="test timeout"
            admin_sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE application_name = 'pg_regress/$t'" >/dev/null
            if [ $((now - start)) -gt $((TEST_TIMEOUT + 60)) ]; then
                kill -KILL -- "-$REGRESS_PID" 2>/dev/null || true
            fi
        fi
    done
    rc=0
    wait "$REGRESS_PID" || rc=$?
    REGRESS_PID=""
    secs=$(( $(date +%s) - start ))

    # Keep this test's output and its diff (pg_regress rewrites regression.diffs on
    # every run).
    [ -f "$OUT/run/results/$t.out" ] && cp "$OUT/run/results/$t.out" "$OUT/results/$t.out"
    if [ -s "$OUT/run/regression.diffs" ]; then
        cp "$OUT/run/regression.diffs" "$OUT/diffs/$t.diff"
    fi
    rm -f "$OUT/run/regression.diffs"

    note=""
    [ "$cancelled" -gt 0 ] && note+=", $cancelled statement(s) cancelled after ${STMT_TIMEOUT}s"
    [ -n "$killed" ] && note+=", sessions ended after ${TEST_TIMEOUT}s"
    [ "$rc" -gt 1 ] && note+=", pg_regress exit $rc (see run/$t.log)"
    if [ "$rc" -eq 0 ] && [ -z "$killed" ]; then
        line="PASS $t (${secs}s)"
        passed=$((passed + 1))
    else
        line="FAIL $t (${secs}s$note)"
        failed+=("$t")
    fi
    echo "$line" | tee -a "$OUT/summary.txt"

    # The server must still be up for the next test; if it went away (a crash that
    # did not come back), say so and stop.
    if ! as_user env "${PG_ENV[@]}" pg_isready -q -t 30; then
        echo "[spock-regress] the server is down after $t; the end of $LOG:" >&2
        tail -20 "$LOG" >&2
        server_down=1
    fi
done

# --- Summary ---
total=${#TESTS[@]}
echo "$passed/$total passed" | tee -a "$OUT/summary.txt"
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}" >>"$OUT/summary.txt"
echo "[spock-regress] results: $OUT/results, diffs: $OUT/diffs, server log: $LOG" >&2
if [ "$STRICT" -eq 1 ] && [ "$passed" -ne "$total" ]; then
    exit 1
fi
exit 0
