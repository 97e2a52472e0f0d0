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
#   --out DIR                where results, diffs and server logs go
#                            (default: a new /tmp/spock-regress.XXXXXX)
#   --isolated               run every test on a fresh instance, after the tests
#                            the schedule runs before it up to and including init
#                            and preseed_check (their results are not counted).
#                            Tells a test's own failures from those it inherits
#                            from an earlier test (for instance a subscription an
#                            earlier test left disabled). The default runs the
#                            whole schedule on one instance, as Spock does.
#   --statement-timeout S    cancel a statement of a test that has been running for
#                            S seconds (default 20; Spock's waits take a second or
#                            two when replication works, so a hang becomes an error
#                            in the diff instead of stopping the run)
#   --test-timeout S         end a test's sessions once it has run S seconds
#                            (default 900: long enough for a test whose every wait
#                            hangs to still reach its cleanup at the end, such as
#                            primary_key's ALTER SYSTEM resets)
#   --setting NAME=VALUE     add a server setting after Spock's configuration (for
#                            instance spock.deleted_version_retention=0, which
#                            turns off spock-rs's retention of deleted row versions
#                            and with it the physical slot spock_retain_<db> that
#                            Spock's tests see in pg_replication_slots); repeatable
#   --keep                   leave the (last) data directory in the output directory
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
# Output directory: summary.txt, results/<test>.out, diffs/<test>.diff,
# run/<test>.log (pg_regress's own output), cancelled.log (statements the hang
# watchdog cancelled), postmaster.log (--isolated: logs/<test>.postmaster.log).
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
STMT_TIMEOUT=20
TEST_TIMEOUT=900
ISOLATED=0
KEEP=0
STRICT=0
ARGS=()
EXTRA_SETTINGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#*=}"; shift ;;
        --statement-timeout) STMT_TIMEOUT="$2"; shift 2 ;;
        --statement-timeout=*) STMT_TIMEOUT="${1#*=}"; shift ;;
        --test-timeout) TEST_TIMEOUT="$2"; shift 2 ;;
        --test-timeout=*) TEST_TIMEOUT="${1#*=}"; shift ;;
        --isolated) ISOLATED=1; shift ;;
        --setting) EXTRA_SETTINGS+=("$2"); shift 2 ;;
        --setting=*) EXTRA_SETTINGS+=("${1#*=}"); shift ;;
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

# The prefix that runs a command as the unprivileged server user (runuser as root,
# sudo otherwise), and as_user, which runs "$@" with it.
if [ "$(id -u)" -eq 0 ]; then
    AS_USER=(runuser -u "$RUN_USER" --)
elif [ "$(id -un)" = "$RUN_USER" ]; then
    AS_USER=()
else
    AS_USER=(sudo -n -u "$RUN_USER" --)
fi
as_user() {
    ${AS_USER[@]+"${AS_USER[@]}"} "$@"
}

# --- Clean shutdown, also on failure or interruption ---
# (Set up before anything is created; every step checks what exists so far.)
REGRESS_PID="" SOCKDIR="" DATA=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A pg_regress still running (interrupted run): end its process group (it was
    # started with setsid, so the group is exactly that run: runuser, pg_regress,
    # psql).
    if [ -n "$REGRESS_PID" ] && kill -0 "$REGRESS_PID" 2>/dev/null; then
        kill -TERM -- "-$REGRESS_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$REGRESS_PID" 2>/dev/null || true
    fi
    [ -n "$DATA" ] && declare -F stop_instance >/dev/null && stop_instance
    [ -n "$SOCKDIR" ] && rm -rf "$SOCKDIR"
    [ "$KEEP" -eq 1 ] || [ -z "$DATA" ] || rm -rf "$DATA"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# --isolated: the tests to run before test "$1" on its fresh instance: those the
# schedule has before it, up to and including the setup part of the schedule, which
# ends with init (the nodes and the subscription every later test builds on) or,
# when the schedule has it after init, with preseed_check (which drops the tables
# preseed made; left in place they change what later tests see). A test outside
# the schedule gets the whole setup part.
setup_for() {
    local t="$1" s last=init seen_init=0
    for s in "${SCHEDULE[@]}"; do
        [ "$s" = init ] && seen_init=1
        [ "$s" = preseed_check ] && [ "$seen_init" -eq 1 ] && last=preseed_check
    done
    for s in "${SCHEDULE[@]}"; do
        [ "$s" = "$t" ] && return
        echo "$s"
        [ "$s" = "$last" ] && return
    done
}

# --- Output directory (owned by the server user, who writes the results) ---
if [ -z "$OUT" ]; then
    OUT="$(mktemp -d /tmp/spock-regress.XXXXXX)"
else
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
    rm -rf "$OUT/data" "$OUT/run" "$OUT/results" "$OUT/diffs" "$OUT/logs" "$OUT/setup" "$OUT/postmaster.log"
fi
mkdir -p "$OUT/run" "$OUT/results" "$OUT/diffs" "$OUT/logs"
: >"$OUT/summary.txt"
: >"$OUT/cancelled.log"
# A short socket directory of its own (unix socket paths are limited to ~100 bytes).
SOCKDIR="$(mktemp -d /tmp/spkrg.XXXXXX)"
chown -R "$RUN_USER" "$OUT" "$SOCKDIR"
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

# --- Server start and stop ---

# Stops the instance in $DATA if it runs: fast shutdown, immediate if that does not
# finish in time.
stop_instance() {
    [ -f "$DATA/postmaster.pid" ] || return 0
    as_user env "${PG_ENV[@]}" pg_ctl -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        as_user env "${PG_ENV[@]}" pg_ctl -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
}

# Makes a fresh instance in $DATA, what pg_regress --temp-instance would make, and
# starts it, logging to $LOG. Returns non-zero if it does not start.
start_instance() {
    stop_instance
    rm -rf "$DATA"
    # initdb as pg_regress runs it (UTF8, C locale as our other test servers use).
    as_user env "${PG_ENV[@]}" initdb -D "$DATA" -E UTF8 --no-locale --no-sync --no-instructions \
        >"$OUT/initdb.log" 2>&1 || { cat "$OUT/initdb.log" >&2; return 1; }
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
        # (grep without -q: -q would stop reading early, and postgres's SIGPIPE would
        # fail the pipeline under pipefail.)
        if "$BINDIR/postgres" --describe-config 2>/dev/null | grep "^output_plugin_libraries" >/dev/null; then
            printf '\n# %s\n' "$REGRESS_DIR/regress-output-plugin.conf"
            cat "$REGRESS_DIR/regress-output-plugin.conf"
        fi
        # ...and where to listen: only the private unix socket, on the chosen port
        # (pg_regress's temp instance also listens on a unix socket only).
        printf "\n# spock-regress.sh\nlisten_addresses = ''\nunix_socket_directories = '%s'\nport = %s\n" \
            "$SOCKDIR" "$PORT"
        # ...and the settings asked for with --setting.
        for setting in ${EXTRA_SETTINGS[@]+"${EXTRA_SETTINGS[@]}"}; do
            printf "%s = '%s'\n" "${setting%%=*}" "${setting#*=}"
        done
    } >>"$DATA/postgresql.conf"
    # Start it, niced (the machine is shared), with pg_regress's environment, from
    # the checkout's top directory as `make regresscheck` does: regress-postgresql.conf
    # names hba_file = './tests/regress/regress-pg_hba.conf', which the server
    # resolves against the directory it was started from.
    if ! (cd "$SPOCK_SRC" && as_user env "${PG_ENV[@]}" nice -n 10 \
            pg_ctl -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null); then
        echo "the server did not start; the end of $LOG:" >&2
        tail -20 "$LOG" >&2
        return 1
    fi
}

# Runs one SQL command as the superuser in database postgres; prints the rows.
admin_sql() {
    as_user env "${PG_ENV[@]}" PGAPPNAME=spock-regress-watchdog \
        psql -X -q -A -t -d postgres -c "$1" 2>/dev/null || true
}

# --- One test: one pg_regress run against the instance ---
# run_test NAME FIRST [DEST]: FIRST=1 for the first test on an instance (pg_regress
# then creates the database "regression" and the role "logical" as it does for a
# fresh instance; later runs use --use-existing). Sets RC (pg_regress's exit
# status, or 3 when the sessions had to be ended), SECS and NOTE, and keeps the
# result and diff in DEST/results and DEST/diffs (default: the output directory).
run_test() {
    local t="$1" start now rows dest="${3:-$OUT}"
    local opts=(--bindir="$BINDIR" --inputdir="$REGRESS_DIR" --outputdir="$OUT/run"
                --dbname=regression --host="$SOCKDIR" --port="$PORT")
    if [ "$2" -eq 1 ]; then
        opts+=(--create-role=logical)
    else
        opts+=(--use-existing)
    fi
    rm -f "$OUT/run/regression.diffs" "$OUT/run/results/$t.out"
    start=$(date +%s)
    # setsid: the run (runuser, pg_regress and its psql) gets a process group of its
    # own, whose id is REGRESS_PID, to end on timeout or interruption. (A background
    # job of this non-interactive shell is no group leader, so setsid does not fork
    # and $! is the new group's leader; -w keeps the exit status in any case.)
    setsid -w ${AS_USER[@]+"${AS_USER[@]}"} env "${PG_ENV[@]}" nice -n 10 "$PG_REGRESS" "${opts[@]}" "$t" \
        >"$OUT/run/$t.log" 2>&1 &
    REGRESS_PID=$!

    # While it runs: cancel any of its statements running longer than the statement
    # timeout (each statement once: pid and start time are remembered); past the
    # test timeout end its sessions, and a minute later the pg_regress run itself.
    local cancelled=0 killed=0 seen=" "
    while kill -0 "$REGRESS_PID" 2>/dev/null; do
        sleep 3
        now=$(date +%s)
        rows="$(admin_sql "SELECT pid || '@' || query_start, pg_cancel_backend(pid),
                   left(regexp_replace(query, '\s+', ' ', 'g'), 300)
            FROM pg_stat_activity
            WHERE backend_type = 'client backend' AND application_name = 'pg_regress/$t'
              AND state = 'active' AND now() - query_start > interval '$STMT_TIMEOUT seconds'")"
        while IFS='|' read -r key _ query; do
            [ -n "$key" ] || continue
            case "$seen" in *" $key "*) continue ;; esac
            seen+="$key "
            cancelled=$((cancelled + 1))
            echo "$t: cancelled after ${STMT_TIMEOUT}s: $query" >>"$OUT/cancelled.log"
        done <<<"$rows"
        if [ $((now - start)) -gt "$TEST_TIMEOUT" ]; then
            killed=1
            admin_sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE application_name = 'pg_regress/$t'" >/dev/null
            if [ $((now - start)) -gt $((TEST_TIMEOUT + 60)) ]; then
                kill -KILL -- "-$REGRESS_PID" 2>/dev/null || true
            fi
        fi
    done
    RC=0
    wait "$REGRESS_PID" || RC=$?
    REGRESS_PID=""
    SECS=$(( $(date +%s) - start ))

    # Keep this test's output and its diff (pg_regress rewrites regression.diffs on
    # every run).
    mkdir -p "$dest/results" "$dest/diffs"
    [ -f "$OUT/run/results/$t.out" ] && cp "$OUT/run/results/$t.out" "$dest/results/$t.out"
    if [ -s "$OUT/run/regression.diffs" ]; then
        cp "$OUT/run/regression.diffs" "$dest/diffs/$t.diff"
    fi

    NOTE=""
    [ "$cancelled" -gt 0 ] && NOTE+=", $cancelled statement(s) cancelled after ${STMT_TIMEOUT}s"
    [ "$killed" -eq 1 ] && { NOTE+=", sessions ended after ${TEST_TIMEOUT}s"; RC=3; }
    [ "$RC" -eq 2 ] && NOTE+=", pg_regress exit 2 (see run/$t.log)"
    return 0
}

# Whether the instance still answers (a crash that did not come back stops the run).
server_up() {
    as_user env "${PG_ENV[@]}" pg_isready -q -t 30
}

# --- The tests ---
echo "[spock-regress] PostgreSQL $("$PG_CONFIG" --version | sed 's/[^0-9.]//g'), socket $SOCKDIR port $PORT" >&2
echo "[spock-regress] ${#TESTS[@]} test(s)$([ "$ISOLATED" -eq 1 ] && echo ', each on a fresh instance'); results in $OUT" >&2
passed=0
failed=()
report() {   # report NAME: prints and records the PASS/FAIL line of the last run_test
    local line
    if [ "$RC" -eq 0 ]; then
        line="PASS $1 (${SECS}s)"
        passed=$((passed + 1))
    else
        line="FAIL $1 (${SECS}s$NOTE)"
        failed+=("$1")
    fi
    echo "$line" | tee -a "$OUT/summary.txt"
}

if [ "$ISOLATED" -eq 0 ]; then
    # The whole list on one instance, as Spock runs it.
    start_instance || exit 2
    first=1
    server_down=0
    for t in "${TESTS[@]}"; do
        # After the server went away the remaining tests cannot run: count them failed.
        if [ "$server_down" -eq 1 ]; then
            echo "FAIL $t (not run: the server is down)" | tee -a "$OUT/summary.txt"
            failed+=("$t")
            continue
        fi
        run_test "$t" "$first"
        first=0
        report "$t"
        if ! server_up; then
            echo "[spock-regress] the server is down after $t; the end of $LOG:" >&2
            tail -20 "$LOG" >&2
            server_down=1
        fi
    done
else
    # Each test on a fresh instance after its setup tests; the setup tests' results
    # go to setup/<test>/{results,diffs} and are not counted.
    for t in "${TESTS[@]}"; do
        LOG="$OUT/logs/$t.postmaster.log"
        if ! start_instance; then
            RC=2 SECS=0 NOTE=", the server did not start"
            report "$t"
            continue
        fi
        first=1
        setup_ok=1
        mapfile -t setup < <(setup_for "$t")
        for s in ${setup[@]+"${setup[@]}"}; do
            run_test "$s" "$first" "$OUT/setup/$t"
            first=0
            # (init never passes byte for byte; what matters is whether a setup
            # test hung or could not run.)
            { [ "$RC" -ge 2 ] || [ -n "$NOTE" ]; } && setup_ok=0
        done
        run_test "$t" "$first"
        [ "$setup_ok" -eq 1 ] || NOTE+=", after a setup test hung (setup/$t)"
        report "$t"
        stop_instance
    done
fi

# --- Summary ---
total=${#TESTS[@]}
echo "$passed/$total passed" | tee -a "$OUT/summary.txt"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >>"$OUT/summary.txt"
fi
echo "[spock-regress] results: $OUT/results, diffs: $OUT/diffs, server log(s): $OUT" >&2
if [ "$STRICT" -eq 1 ] && [ "$passed" -ne "$total" ]; then
    exit 1
fi
exit 0
