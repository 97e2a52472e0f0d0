//! The measurements, the same for every system, on one provider/subscriber pair.
//!
//! One round of one system ([`run_round`]):
//! 1. start a provider and a subscriber (tmpfs), `track_commit_timestamp = off`;
//!    `pgbench -i` at the same scale on both (identical data), the benchmark tables
//!    `big` and `bench_marker` on both, and on the subscriber an extra column
//!    `pgbench_history.applied_at timestamptz DEFAULT clock_timestamp()` that the
//!    apply process fills in as it inserts each replicated row; then
//!    `track_commit_timestamp = on` on both (restart). Rows loaded with commit
//!    timestamps off carry no origin, so no update_origin_differs conflict fires
//!    when replicated updates hit them.
//! 2. the system's replication objects; wait until a marker row arrives.
//! 3. backlog catch-up: disable the subscription (wait until its apply processes
//!    are gone and the provider's slot is inactive), run `pgbench -b simple-update
//!    -c4 -j2 -T30` on the provider, note the provider's WAL insert position and
//!    commit a marker row, enable the subscription and poll the subscriber's
//!    `pg_replication_origin_status` until its `remote_lsn` passes that position
//!    (that is: the marker and every pgbench transaction before it are applied).
//!    tx/s = pgbench transactions / (enable -> applied); rows = 2 per transaction
//!    (one UPDATE of pgbench_accounts, one INSERT into pgbench_history).
//! 4. steady lag: `pgbench -R 500` with the subscription running; afterwards, on
//!    the subscriber, lag of each transaction = `applied_at` (when the apply process
//!    inserted its history row) - `pg_xact_commit_timestamp(xmin)` (a replicated
//!    transaction keeps its origin's commit timestamp). Nothing is polled during the
//!    run.
//! 5. one large transaction: `INSERT INTO big` of N rows in one transaction on the
//!    provider; time from COMMIT returning to the last row being visible on the
//!    subscriber (polled); the RSS of the subscriber's apply processes sampled from
//!    /proc meanwhile. Repeated per streaming mode the system has.
//!
//! Every poll is one autocommit statement over the simple protocol: no snapshot or
//! transaction stays open between polls (an open snapshot on the subscriber holds
//! back cleanup and slowed apply 5x in an earlier attempt).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spock_tests::postgres::{Client, SimpleQueryMessage};

use super::node::{self, mem_of, run_pgbench, Node};
use super::systems::{Env, Pair, System};
use super::{epoch_now, err, Config, Result};
use spock_tests::process::children_of;
use spock_tests::query_text;

/// Backlog catch-up of one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backlog {
    /// pgbench transactions in the backlog.
    pub txns: u64,
    /// Row changes in the backlog (2 per transaction).
    pub rows: u64,
    /// pgbench's rate while producing the backlog (no subscriber connected).
    pub pgbench_tps: f64,
    /// Seconds from enabling the subscription until the origin passed the end.
    pub catchup_s: f64,
    /// txns / catchup_s.
    pub tx_per_s: f64,
    /// rows / catchup_s.
    pub rows_per_s: f64,
    /// Seconds from enabling until the first backlog row was applied (worker start,
    /// connection, decoding start).
    pub first_apply_s: f64,
    /// Applied transactions per second over time since enabling: (seconds, tx/s).
    pub timeline: Vec<(f64, f64)>,
}

/// Steady lag of one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steady {
    /// Transactions measured.
    pub txns: u64,
    /// Median lag, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Lag over time in 1 s buckets of provider commit time: (seconds since the
    /// start, median ms, 99th percentile ms).
    pub series: Vec<(f64, f64, f64)>,
}

/// The one large transaction of one round and streaming mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Large {
    /// "off" or the system's streaming mode.
    pub streaming: String,
    /// Rows inserted in the transaction.
    pub rows: u64,
    /// Seconds the INSERT and COMMIT took on the provider.
    pub insert_s: f64,
    /// Seconds from COMMIT returning on the provider to the last row being visible
    /// on the subscriber.
    pub commit_to_visible_s: f64,
    /// Peak of the summed RSS of the apply processes (sampled), MiB.
    pub peak_rss_mib: f64,
    /// Peak of their summed anonymous (private) resident memory, MiB.
    pub peak_anon_mib: f64,
    /// Samples taken.
    pub samples: u32,
    /// Titles of the processes sampled.
    pub processes: Vec<String>,
}

/// Everything measured in one round of one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    /// System name.
    pub system: String,
    /// 1-based round.
    pub round: usize,
    /// Seconds to start, load and set up the pair.
    pub setup_s: f64,
    /// Workload 1.
    pub backlog: Backlog,
    /// Workload 2.
    pub steady: Steady,
    /// Workload 3, per streaming mode ("off" first).
    pub large: Vec<Large>,
    /// Workload 4 (`deletes`): backlog catch-up of the delete-heavy mix.
    #[serde(default)]
    pub delete_mix: Option<Backlog>,
    /// Workload 5 (`parallel`): catch-up of three backlogs with the CPU time of
    /// the processes involved.
    #[serde(default)]
    pub catchups: Vec<Catchup>,
    /// Seconds the whole round took.
    pub total_s: f64,
}

fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    thread::scope(|s| {
        let ha = s.spawn(a);
        let hb = s.spawn(b);
        (ha.join().expect("worker thread panicked"), hb.join().expect("worker thread panicked"))
    })
}

fn log(sys: &str, round: usize, msg: &str) {
    eprintln!("[bench] round {round} {sys}: {msg}");
}

/// Starts and loads a pair for `sys`, runs the three workloads, stops the pair.
pub fn run_round(sys: &dyn System, env: &Env, cfg: &Config, round: usize) -> Result<RoundResult> {
    let started = Instant::now();
    let pgbench = env.pg18.program("pgbench");
    let settings = sys.settings();
    let install = sys.install();
    let (p, s) = both(
        || node::start(install, "provider", &env.data_root, &settings, env.keep),
        || node::start(install, "subscriber", &env.data_root, &settings, env.keep),
    );
    let pair = Pair { provider: p?, subscriber: s? };
    load(&pair, &pgbench, cfg)?;
    sys.setup(&pair)?;
    wait_replicating(&pair, Duration::from_secs(120))
        .map_err(|e| super::Error(format!("replication does not start: {e}")))?;
    let setup_s = started.elapsed().as_secs_f64();
    log(sys.name(), round, &format!("pair ready in {setup_s:.1} s"));

    let backlog = backlog(sys, &pair, &pgbench, cfg)?;
    log(
        sys.name(),
        round,
        &format!(
            "backlog of {} tx ({:.0} tx/s produced) applied in {:.2} s: {:.0} tx/s, {:.0} rows/s",
            backlog.txns, backlog.pgbench_tps, backlog.catchup_s, backlog.tx_per_s, backlog.rows_per_s
        ),
    );
    let steady = steady(&pair, &pgbench, cfg)?;
    log(
        sys.name(),
        round,
        &format!(
            "steady {} tx/s: lag p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            cfg.steady_rate, steady.p50_ms, steady.p99_ms, steady.max_ms
        ),
    );
    let mut larges = Vec::new();
    for mode in std::iter::once("off").chain(sys.streaming_modes().iter().copied()) {
        if mode != "off" {
            sys.set_streaming(&pair, mode)?;
            wait_replicating(&pair, Duration::from_secs(120))?;
        }
        let l = large(sys, &pair, cfg, mode)?;
        log(
            sys.name(),
            round,
            &format!(
                "{} rows in one transaction (streaming {mode}): insert {:.2} s, COMMIT -> visible {:.2} s, apply RSS peak {:.0} MiB (private {:.0} MiB)",
                l.rows, l.insert_s, l.commit_to_visible_s, l.peak_rss_mib, l.peak_anon_mib
            ),
        );
        larges.push(l);
    }
    let delete_mix = if cfg.runs("deletes") {
        let d = delete_mix(sys, &pair, &pgbench, cfg, &env.data_root)?;
        log(
            sys.name(),
            round,
            &format!(
                "delete mix: backlog of {} tx ({:.0} tx/s produced, {} row changes) applied in {:.2} s: {:.0} tx/s",
                d.txns, d.pgbench_tps, d.rows, d.catchup_s, d.tx_per_s
            ),
        );
        Some(d)
    } else {
        None
    };
    let mut catchups = Vec::new();
    if cfg.runs("parallel") {
        for kind in CATCHUP_MIXES {
            let c = catchup_mix(sys, &pair, &pgbench, cfg, &env.data_root, kind)?;
            log(
                sys.name(),
                round,
                &format!(
                    "{kind} catch-up: {} tx ({:.0} tx/s produced) applied in {:.2} s: {:.0} tx/s; CPU s: walsender {:.1}, apply leader {:.1}, writers {:.1}; apply RSS peak {:.0} MiB",
                    c.backlog.txns,
                    c.backlog.pgbench_tps,
                    c.backlog.catchup_s,
                    c.backlog.tx_per_s,
                    c.cpu_walsender_s,
                    c.cpu_leader_s,
                    c.cpu_writers_s,
                    c.peak_rss_mib
                ),
            );
            catchups.push(c);
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    log(sys.name(), round, &format!("done in {total_s:.0} s"));
    Ok(RoundResult {
        system: sys.name().to_string(),
        round,
        setup_s,
        backlog,
        steady,
        large: larges,
        delete_mix,
        catchups,
        total_s,
    })
}

/// Same initial data on both sides, loaded with commit timestamps off; then on.
fn load(pair: &Pair, pgbench: &Path, cfg: &Config) -> Result<()> {
    let init = vec!["-i".to_string(), "-q".to_string(), "-s".to_string(), cfg.scale.to_string()];
    let (a, b) = both(|| run_pgbench(&pair.provider, pgbench, &init), || run_pgbench(&pair.subscriber, pgbench, &init));
    a?;
    b?;
    // bench_queue: every other key of the delete mix's key space is there at the start
    let tables = format!(
        "CREATE TABLE big(id int PRIMARY KEY, v int, pad text);
         CREATE TABLE bench_marker(id int PRIMARY KEY, at timestamptz);
         CREATE TABLE bench_queue(id int PRIMARY KEY, v int, pad text);
         CREATE TABLE bench_ins_a(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int, pad text);
         CREATE TABLE bench_ins_b(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int, pad text);
         CREATE TABLE bench_ins_c(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int);
         INSERT INTO bench_queue SELECT g, 0, repeat('q', 40) FROM generate_series(1, {}, 2) g",
        queue_keys(cfg)
    );
    let tables = tables.as_str();
    pair.provider.execute(tables)?;
    pair.subscriber.execute(tables)?;
    pair.subscriber
        .execute("ALTER TABLE pgbench_history ADD COLUMN applied_at timestamptz DEFAULT clock_timestamp()")?;
    let (a, b) = both(
        || pair.provider.set_and_restart("track_commit_timestamp", "on"),
        || pair.subscriber.set_and_restart("track_commit_timestamp", "on"),
    );
    a?;
    b
}

/// Notes the provider's WAL insert position, then commits a marker row. Once the
/// subscriber's origin has passed the position, the marker and everything
/// committed before it are applied. Returns (position, marker id).
fn mark(pair: &Pair) -> Result<(String, String)> {
    let mut c = pair.provider.connect()?;
    let lsn = query_text(&mut c, "SELECT pg_current_wal_insert_lsn()")?;
    let id = query_text(
        &mut c,
        "INSERT INTO bench_marker SELECT coalesce(max(id), 0) + 1, now() FROM bench_marker RETURNING id",
    )?;
    Ok((lsn, id))
}

/// Polls the subscriber's replication origin until its remote_lsn is at least
/// `lsn`; returns when that was seen.
fn wait_applied(sub: &Node, lsn: &str, cfg: &Config, timeout: Duration) -> Result<Instant> {
    let mut c = sub.connect()?;
    let sql = format!("SELECT coalesce(max(remote_lsn), '0/0') >= '{lsn}'::pg_lsn FROM pg_replication_origin_status");
    let deadline = Instant::now() + timeout;
    loop {
        if query_text(&mut c, &sql)? == "t" {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return err(format!(
                "the subscriber did not apply up to {lsn} within {timeout:?}\n--- subscriber log ---\n{}",
                sub.log_tail(30)
            ));
        }
        thread::sleep(cfg.poll);
    }
}

/// Waits (briefly) until marker row `id` is visible on the subscriber: the origin
/// advances in the commit record, a moment before the transaction becomes visible.
fn check_marker(sub: &Node, id: &str, within: Duration) -> Result<bool> {
    let mut c = sub.connect()?;
    let sql = format!("SELECT count(*) FROM bench_marker WHERE id = {id}");
    let deadline = Instant::now() + within;
    loop {
        if query_text(&mut c, &sql)? == "1" {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn marker_visible(sub: &Node, id: &str) -> Result<()> {
    if !check_marker(sub, id, Duration::from_secs(10))? {
        return err(format!("origin passed marker {id} but the row is not on the subscriber\n{}", sub.log_tail(20)));
    }
    Ok(())
}

/// Waits until the subscription replicates: a marker row arrives. Markers
/// committed before the system created its slot are never sent (and the origin may
/// start at the slot's position), so a new marker is tried every half second.
fn wait_replicating(pair: &Pair, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, id) = mark(pair)?;
        if check_marker(&pair.subscriber, &id, Duration::from_millis(500))? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return err(format!(
                "no change arrived within {timeout:?}\n--- subscriber log ---\n{}\n--- provider log ---\n{}",
                pair.subscriber.log_tail(30),
                pair.provider.log_tail(15)
            ));
        }
    }
}

/// Waits until everything committed on the provider so far is applied.
fn sync(pair: &Pair, cfg: &Config, timeout: Duration) -> Result<()> {
    let (lsn, id) = mark(pair)?;
    wait_applied(&pair.subscriber, &lsn, cfg, timeout)?;
    marker_visible(&pair.subscriber, &id)
}

/// Both sides hold the same pgbench data.
fn check_same(pair: &Pair) -> Result<()> {
    let sql = "SELECT (SELECT count(*) || ' accounts, balance ' || sum(abalance) FROM pgbench_accounts) || ', ' \
               || (SELECT count(*) FROM pgbench_history) || ' history rows'";
    let p = pair.provider.query_text(sql)?;
    let s = pair.subscriber.query_text(sql)?;
    if p != s {
        return err(format!("subscriber differs from provider: provider {p}; subscriber {s}"));
    }
    Ok(())
}

fn apply_processes(sys: &dyn System, sub: &Node) -> Vec<(u32, String)> {
    let Some(pm) = sub.postmaster_pid() else { return Vec::new() };
    children_of(pm)
        .into_iter()
        .filter(|(_, title)| sys.apply_process_patterns().iter().any(|p| title.contains(p)))
        .collect()
}

fn wait_stopped(sys: &dyn System, pair: &Pair) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = pair.provider.connect()?;
    loop {
        let procs = apply_processes(sys, &pair.subscriber);
        let active = query_text(&mut c, "SELECT count(*) FROM pg_replication_slots WHERE active")?;
        if procs.is_empty() && active == "0" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return err(format!(
                "subscription still running after disable: apply processes {procs:?}, {active} active slot(s)"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn pgbench_number(out: &str, prefix: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| super::Error(format!("no \"{prefix}\" in pgbench output:\n{out}")))
}

/// pgbench arguments: no vacuum, the `workload` arguments, the configured clients
/// and threads, then `extra`.
fn pgbench_args(cfg: &Config, workload: &[&str], extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = std::iter::once("-n").chain(workload.iter().copied()).map(String::from).collect();
    args.extend(["-c".to_string(), cfg.clients.to_string(), "-j".to_string(), cfg.threads.to_string()]);
    args.extend_from_slice(extra);
    args
}

fn simple_update(cfg: &Config, extra: &[String]) -> Vec<String> {
    pgbench_args(cfg, &["-b", "simple-update"], extra)
}

/// Rows of `sql` (simple protocol), each as a vector of floats.
fn float_rows(c: &mut Client, sql: &str) -> Result<Vec<Vec<f64>>> {
    let mut rows = Vec::new();
    for m in c.simple_query(sql)? {
        if let SimpleQueryMessage::Row(r) = m {
            let mut v = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                let s = r.get(i).ok_or_else(|| super::Error(format!("{sql}: NULL in column {i}")))?;
                v.push(s.parse::<f64>().map_err(|_| super::Error(format!("{sql}: not a number: {s}")))?);
            }
            rows.push(v);
        }
    }
    Ok(rows)
}

fn backlog(sys: &dyn System, pair: &Pair, pgbench: &Path, cfg: &Config) -> Result<Backlog> {
    sys.disable(pair)?;
    wait_stopped(sys, pair)?;
    let before: u64 = pair.provider.query_text("SELECT count(*) FROM pgbench_history")?.parse().unwrap_or(0);
    let out = run_pgbench(&pair.provider, pgbench, &simple_update(cfg, &["-T".into(), cfg.backlog_secs.to_string()]))?;
    let pgbench_tps = pgbench_number(&out, "tps =")?;
    let after: u64 = pair.provider.query_text("SELECT count(*) FROM pgbench_history")?.parse().unwrap_or(0);
    let txns = after - before;
    let (enabled_epoch, catchup_s) = catch_up(sys, pair, cfg)?;
    check_same(pair)?;

    let bucket = 0.5;
    let mut c = pair.subscriber.connect()?;
    let timeline = float_rows(
        &mut c,
        &format!(
            "SELECT floor((extract(epoch FROM applied_at) - {enabled_epoch}) / {bucket}), count(*) \
             FROM pgbench_history WHERE applied_at >= to_timestamp({enabled_epoch}) GROUP BY 1 ORDER BY 1"
        ),
    )?
    .into_iter()
    .map(|r| (r[0] * bucket + bucket / 2.0, r[1] / bucket))
    .collect();
    let first_apply_s = float_rows(
        &mut c,
        &format!("SELECT coalesce(extract(epoch FROM min(applied_at)) - {enabled_epoch}, 0) FROM pgbench_history WHERE applied_at >= to_timestamp({enabled_epoch})"),
    )?
    .first()
    .map(|r| r[0])
    .unwrap_or(0.0);
    Ok(Backlog { first_apply_s, timeline, ..Backlog::measured(txns, 2 * txns, pgbench_tps, catchup_s) })
}

impl Backlog {
    /// A backlog of `txns` transactions (`rows` row changes) that pgbench produced
    /// at `pgbench_tps` and the subscriber applied in `catchup_s`; no time line.
    fn measured(txns: u64, rows: u64, pgbench_tps: f64, catchup_s: f64) -> Backlog {
        Backlog {
            txns,
            rows,
            pgbench_tps,
            catchup_s,
            tx_per_s: txns as f64 / catchup_s,
            rows_per_s: rows as f64 / catchup_s,
            first_apply_s: 0.0,
            timeline: Vec::new(),
        }
    }
}

/// Notes the end of the backlog (a marker), enables the subscription and waits
/// until the subscriber has applied everything up to the marker; returns when it
/// was enabled (epoch seconds) and the seconds the catch-up took.
fn catch_up(sys: &dyn System, pair: &Pair, cfg: &Config) -> Result<(f64, f64)> {
    let (lsn, id) = mark(pair)?;
    let enabled_epoch = epoch_now();
    let t0 = Instant::now();
    sys.enable(pair)?;
    let t1 = wait_applied(&pair.subscriber, &lsn, cfg, cfg.catchup_timeout)?;
    marker_visible(&pair.subscriber, &id)?;
    Ok((enabled_epoch, (t1 - t0).as_secs_f64()))
}

/// Key space of the delete mix (`bench_queue`).
fn queue_keys(cfg: &Config) -> u64 {
    20_000 * cfg.scale as u64
}

/// The delete mix, one pgbench transaction: delete a random key of `bench_queue`
/// (there half of the time), then insert another random key, or update it where it
/// exists. In the steady state half of the keys exist, so a transaction changes
/// about 1.5 rows: a DELETE half of the time, an INSERT (often of a key deleted
/// earlier) or an UPDATE. Every INSERT is searched for deleted versions on spock.
const DELETE_MIX: &str = "\\set d random(1, :keys)
\\set i random(1, :keys)
BEGIN;
DELETE FROM bench_queue WHERE id = :d;
INSERT INTO bench_queue VALUES (:i, :d, repeat('q', 40)) ON CONFLICT (id) DO UPDATE SET v = excluded.v;
END;
";

/// Row changes of `bench_queue` so far (cumulative statistics of the provider: the
/// pgbench sessions report theirs as they exit, so the count is approximate).
fn queue_changes(node: &Node) -> Result<u64> {
    let v = node.query_text(
        "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 'bench_queue'",
    )?;
    Ok(v.trim().parse().unwrap_or(0))
}

/// Workload 4: backlog catch-up of [`DELETE_MIX`] (`-c/-j` as the backlog, for
/// `backlog_secs`), measured as [`backlog`] measures simple-update. Then both
/// sides must hold the same `bench_queue`.
fn delete_mix(sys: &dyn System, pair: &Pair, pgbench: &Path, cfg: &Config, dir: &Path) -> Result<Backlog> {
    let script = dir.join(format!("delete-mix-{}.sql", std::process::id()));
    std::fs::write(&script, DELETE_MIX).map_err(|e| super::Error(format!("{}: {e}", script.display())))?;
    sys.disable(pair)?;
    wait_stopped(sys, pair)?;
    let changes_before = queue_changes(&pair.provider)?;
    let (path, keys) = (script.display().to_string(), format!("keys={}", queue_keys(cfg)));
    let args = pgbench_args(cfg, &["-f", &path, "-D", &keys], &["-T".into(), cfg.backlog_secs.to_string()]);
    let out = run_pgbench(&pair.provider, pgbench, &args);
    let _ = std::fs::remove_file(&script);
    let out = out?;
    let pgbench_tps = pgbench_number(&out, "tps =")?;
    let txns = pgbench_number(&out, "number of transactions actually processed:")? as u64;
    let rows = queue_changes(&pair.provider)?.saturating_sub(changes_before);
    let (_, catchup_s) = catch_up(sys, pair, cfg)?;
    let sql =
        "SELECT count(*) || ' rows, sum ' || coalesce(sum(v), 0) || ', keys ' || coalesce(sum(id), 0) FROM bench_queue";
    let (p, s) = (pair.provider.query_text(sql)?, pair.subscriber.query_text(sql)?);
    if p != s {
        return err(format!("delete mix: subscriber differs from provider: provider {p}; subscriber {s}"));
    }
    Ok(Backlog::measured(txns, rows, pgbench_tps, catchup_s))
}

/// The backlogs of workload group `parallel`: pgbench's simple-update (independent
/// rows, but every transaction also inserts into `pgbench_history`), tpcb-like
/// (every transaction updates one of `scale` branch rows and one of 10 x `scale`
/// teller rows: dependency bound) and an insert-heavy mix over three tables.
pub const CATCHUP_MIXES: &[&str] = &["simple-update", "tpcb-like", "insert-mix"];

/// One transaction of the insert mix: a row into each of three tables.
const INSERT_MIX: &str = "\\set v random(1, 1000000000)
BEGIN;
INSERT INTO bench_ins_a(v, pad) VALUES (:v, repeat('a', 40));
INSERT INTO bench_ins_b(v, pad) VALUES (:v, repeat('b', 100));
INSERT INTO bench_ins_c(v) VALUES (:v);
END;
";

/// Catch-up of one backlog with the CPU each role spent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catchup {
    /// One of [`CATCHUP_MIXES`].
    pub workload: String,
    /// The backlog and its catch-up.
    pub backlog: Backlog,
    /// CPU seconds (user + system) during the catch-up of the provider's walsender,
    /// the subscriber's apply leader (the one apply process of serial apply) and
    /// its writers (parallel apply processes).
    pub cpu_walsender_s: f64,
    pub cpu_leader_s: f64,
    pub cpu_writers_s: f64,
    /// Peak of the summed RSS of the apply processes, MiB.
    pub peak_rss_mib: f64,
}

/// CPU ticks (user + system) of process `pid` so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command (in parentheses, which may hold spaces): state is
    // field 3, utime 14, stime 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Samples the CPU time of the walsenders of the provider and the apply processes
/// of the subscriber, by process, until stopped. Every one of them starts when
/// the subscription is enabled, so its whole CPU time belongs to the catch-up.
struct CpuSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(CpuByProcess, u64)>,
}

/// Per process id: its title and its CPU ticks at the last sample.
type CpuByProcess = std::collections::HashMap<u32, (String, u64)>;

impl CpuSampler {
    fn start(provider_pm: u32, subscriber_pm: u32, patterns: &'static [&'static str]) -> CpuSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut seen = CpuByProcess::new();
            let mut peak_rss = 0u64;
            let mut n = 0u32;
            let mut procs: Vec<(u32, String)> = Vec::new();
            loop {
                let last = flag.load(Ordering::Relaxed);
                if n.is_multiple_of(5) || last {
                    procs = children_of(provider_pm)
                        .into_iter()
                        .filter(|(_, t)| t.contains("walsender"))
                        .chain(
                            children_of(subscriber_pm)
                                .into_iter()
                                .filter(|(_, t)| patterns.iter().any(|p| t.contains(p))),
                        )
                        .collect();
                }
                n += 1;
                let mut rss = 0;
                for (pid, title) in &procs {
                    if let Some(t) = cpu_ticks(*pid) {
                        seen.insert(*pid, (title.clone(), t));
                    }
                    if !title.contains("walsender") {
                        rss += mem_of(*pid).map_or(0, |m| m.rss_kb);
                    }
                }
                peak_rss = peak_rss.max(rss);
                if last {
                    return (seen, peak_rss);
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        CpuSampler { stop, handle }
    }

    /// (walsender, leader, writers) CPU seconds and the peak RSS in MiB.
    fn finish(self) -> (f64, f64, f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, peak_rss) = self.handle.join().unwrap_or_default();
        let hz = ticks_per_second();
        let (mut w, mut l, mut p) = (0.0, 0.0, 0.0);
        for (title, ticks) in seen.values() {
            let s = *ticks as f64 / hz;
            if title.contains("walsender") {
                w += s;
            } else if title.contains("writer") || title.contains("parallel apply") {
                p += s;
            } else {
                l += s;
            }
        }
        (w, l, p, peak_rss as f64 / 1024.0)
    }
}

/// Workload 5: backlog catch-up of pgbench mix `kind` (one of [`CATCHUP_MIXES`]),
/// measured as [`backlog`] measures simple-update, with the CPU time of each role.
/// Both sides must then hold the same data.
fn catchup_mix(sys: &dyn System, pair: &Pair, pgbench: &Path, cfg: &Config, dir: &Path, kind: &str) -> Result<Catchup> {
    let script = dir.join(format!("insert-mix-{}.sql", std::process::id()));
    sys.disable(pair)?;
    wait_stopped(sys, pair)?;
    let path = script.display().to_string();
    let workload: Vec<&str> = match kind {
        "insert-mix" => {
            std::fs::write(&script, INSERT_MIX).map_err(|e| super::Error(format!("{}: {e}", script.display())))?;
            vec!["-f", &path]
        }
        other => vec!["-b", other],
    };
    let args = pgbench_args(cfg, &workload, &["-T".into(), cfg.backlog_secs.to_string()]);
    let out = run_pgbench(&pair.provider, pgbench, &args);
    let _ = std::fs::remove_file(&script);
    let out = out?;
    let pgbench_tps = pgbench_number(&out, "tps =")?;
    let txns = pgbench_number(&out, "number of transactions actually processed:")? as u64;
    let ppm = pair.provider.postmaster_pid().ok_or_else(|| super::Error("provider is not running".into()))?;
    let spm = pair.subscriber.postmaster_pid().ok_or_else(|| super::Error("subscriber is not running".into()))?;
    let sampler = CpuSampler::start(ppm, spm, sys.apply_process_patterns());
    let caught_up = catch_up(sys, pair, cfg);
    let (cpu_walsender_s, cpu_leader_s, cpu_writers_s, peak_rss_mib) = sampler.finish();
    let (_, catchup_s) = caught_up?;
    let sql = "SELECT (SELECT count(*) || ' accounts ' || sum(abalance) FROM pgbench_accounts) || ', ' \
               || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) \
               || ', ' || (SELECT count(*) FROM pgbench_history) || ' history, ' \
               || (SELECT count(*) || '/' || coalesce(sum(v), 0) FROM bench_ins_a) || ' ' \
               || (SELECT count(*) FROM bench_ins_b) || ' ' || (SELECT count(*) FROM bench_ins_c)";
    let (p, s) = (pair.provider.query_text(sql)?, pair.subscriber.query_text(sql)?);
    if p != s {
        return err(format!("{kind}: subscriber differs from provider: provider {p}; subscriber {s}"));
    }
    let rows = match kind {
        "tpcb-like" => 4 * txns,
        "insert-mix" => 3 * txns,
        _ => 2 * txns,
    };
    Ok(Catchup {
        workload: kind.to_string(),
        backlog: Backlog::measured(txns, rows, pgbench_tps, catchup_s),
        cpu_walsender_s,
        cpu_leader_s,
        cpu_writers_s,
        peak_rss_mib,
    })
}

/// Value at quantile `q` (0..1) of sorted `v`, linear interpolation.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn steady(pair: &Pair, pgbench: &Path, cfg: &Config) -> Result<Steady> {
    let start_epoch = epoch_now();
    run_pgbench(
        &pair.provider,
        pgbench,
        &simple_update(cfg, &["-R".into(), cfg.steady_rate.to_string(), "-T".into(), cfg.steady_secs.to_string()]),
    )?;
    // let the last transactions be applied before sync's connections start
    // backends that compete with the apply process for the CPU
    thread::sleep(Duration::from_millis(500));
    sync(pair, cfg, cfg.catchup_timeout)?;
    check_same(pair)?;
    let mut c = pair.subscriber.connect()?;
    let rows = float_rows(
        &mut c,
        &format!(
            "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) - {start_epoch}, \
                    extract(epoch FROM applied_at - pg_xact_commit_timestamp(xmin)) * 1000 \
             FROM pgbench_history WHERE applied_at >= to_timestamp({start_epoch}) ORDER BY 1"
        ),
    )?;
    if rows.is_empty() {
        return err("steady test: no transaction arrived");
    }
    let mut lags: Vec<f64> = rows.iter().map(|r| r[1]).collect();
    lags.sort_by(f64::total_cmp);
    if quantile(&lags, 0.5) < 0.0 {
        return err("steady test: applied before committed? the subscriber's commit timestamps are not the origin's");
    }
    let mut series = Vec::new();
    let bucket = 1.0;
    let mut i = 0;
    while i < rows.len() {
        let b = (rows[i][0] / bucket).floor();
        let mut v = Vec::new();
        while i < rows.len() && (rows[i][0] / bucket).floor() == b {
            v.push(rows[i][1]);
            i += 1;
        }
        v.sort_by(f64::total_cmp);
        // The few transactions committed after the last full second are the ones
        // pgbench commits while it and its backends exit (which delays their apply
        // by ~4 ms on 2 cores); they count in the percentiles, but a bucket of a
        // handful of them would only draw a spike at the end of the plot.
        if b * bucket < f64::from(cfg.steady_secs) {
            series.push((b * bucket + bucket / 2.0, quantile(&v, 0.5), quantile(&v, 0.99)));
        }
    }
    Ok(Steady {
        txns: lags.len() as u64,
        p50_ms: quantile(&lags, 0.5),
        p90_ms: quantile(&lags, 0.9),
        p99_ms: quantile(&lags, 0.99),
        max_ms: *lags.last().unwrap_or(&0.0),
        mean_ms: lags.iter().sum::<f64>() / lags.len() as f64,
        series,
    })
}

/// Samples the memory of the apply processes (children of the subscriber's
/// postmaster whose title matches) until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64, u32, BTreeSet<String>)>,
}

impl Sampler {
    fn start(postmaster: u32, patterns: &'static [&'static str], interval: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut peak_rss, mut peak_anon, mut samples) = (0u64, 0u64, 0u32);
            let mut titles = BTreeSet::new();
            let mut procs: Vec<(u32, String)> = Vec::new();
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                // a /proc scan finds new processes (parallel apply workers come
                // and go); in between, only the known ones are read
                if n.is_multiple_of(8) || procs.is_empty() {
                    procs = children_of(postmaster)
                        .into_iter()
                        .filter(|(_, t)| patterns.iter().any(|p| t.contains(p)))
                        .collect();
                }
                n += 1;
                let (mut rss, mut anon) = (0u64, 0u64);
                for (pid, title) in &procs {
                    if let Some(m) = mem_of(*pid) {
                        rss += m.rss_kb;
                        anon += m.anon_kb;
                        // the title ends in " waiting" while it waits for a lock
                        titles.insert(title.trim_end_matches(" waiting").trim_end().to_string());
                    }
                }
                peak_rss = peak_rss.max(rss);
                peak_anon = peak_anon.max(anon);
                samples += 1;
                thread::sleep(interval);
            }
            (peak_rss, peak_anon, samples, titles)
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> (u64, u64, u32, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn large(sys: &dyn System, pair: &Pair, cfg: &Config, mode: &str) -> Result<Large> {
    let n = cfg.large_rows;
    let pm = pair.subscriber.postmaster_pid().ok_or_else(|| super::Error("subscriber is not running".into()))?;
    let mut prov = pair.provider.connect()?;
    let mut sub = pair.subscriber.connect()?;
    let sampler = Sampler::start(pm, sys.apply_process_patterns(), Duration::from_millis(20));
    let t0 = Instant::now();
    let result = (|| -> Result<(f64, f64)> {
        prov.batch_execute(&format!(
            "BEGIN; INSERT INTO big SELECT g, g, repeat('x', 80) FROM generate_series(1, {n}) g"
        ))?;
        prov.batch_execute("COMMIT")?;
        let committed = Instant::now();
        let probe = format!("SELECT EXISTS (SELECT 1 FROM big WHERE id = {n})");
        let deadline = committed + cfg.catchup_timeout;
        loop {
            if query_text(&mut sub, &probe)? == "t" {
                let visible = Instant::now();
                return Ok(((committed - t0).as_secs_f64(), (visible - committed).as_secs_f64()));
            }
            if Instant::now() > deadline {
                return err(format!(
                    "large transaction not visible after {:?}\n{}",
                    cfg.catchup_timeout,
                    pair.subscriber.log_tail(30)
                ));
            }
            thread::sleep(cfg.poll);
        }
    })();
    let (rss, anon, samples, titles) = sampler.finish();
    let (insert_s, commit_to_visible_s) = result?;
    let count = pair.subscriber.query_text("SELECT count(*) FROM big")?;
    if count != n.to_string() {
        return err(format!("large transaction: {count} rows on the subscriber, expected {n}"));
    }
    pair.provider.execute("TRUNCATE big")?;
    sync(pair, cfg, cfg.catchup_timeout)?;
    // in case the system does not replicate TRUNCATE
    pair.subscriber.execute("TRUNCATE big")?;
    Ok(Large {
        streaming: mode.to_string(),
        rows: n,
        insert_s,
        commit_to_visible_s,
        peak_rss_mib: rss as f64 / 1024.0,
        peak_anon_mib: anon as f64 / 1024.0,
        samples,
        processes: titles.into_iter().collect(),
    })
}
