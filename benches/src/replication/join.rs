//! The join workload: how long a new node takes to get a copy of a provider's
//! pgbench database and be ready to stream, per system and way of joining
//! ([`JoinVariant`]), in the same run as PostgreSQL's native `copy_data`.
//!
//! One round of one system and variant ([`run_join`]):
//! 1. a provider and a subscriber (tmpfs, the system's settings); `pgbench -i -s N`
//!    on the provider; on the subscriber, when the variant has the schema
//!    beforehand, `pgbench -i -I dtp` (the same tables and primary keys, no rows),
//!    otherwise nothing (an empty database); the system's provider objects
//!    (publication, or spock node and replication sets) and subscriber objects
//!    (spock extension and node); `CHECKPOINT` on both.
//! 2. the clock starts; the system's statement creates the subscription with an
//!    initial copy (`CREATE SUBSCRIPTION ... WITH (copy_data = true)` or
//!    `spock.sub_create(..., synchronize_data := true)`); the system's state query
//!    is polled every 10 ms (one autocommit statement each, as in the other
//!    workloads) until it says `ready`: native, every row of `pg_subscription_rel`
//!    in state `r`; spock, the subscription's row of `spock.local_sync_status` in
//!    state `r` (what `spock.sub_wait_for_sync` waits for; it is called afterwards
//!    and must return at once). The clock stops. The time spent in each state the
//!    poll saw is kept: the phases.
//! 3. every table's row count, the sum of `pgbench_accounts.abalance` and the
//!    number of indexes of the pgbench tables must be equal on both sides, else the
//!    round fails.
//!
//! `ERROR` lines in the subscriber's log while the clock runs are kept with the
//! round and listed under the table (a worker that fails is restarted by both
//! systems, and the time includes that); the round fails only on the timeout or
//! when the two sides differ.

use std::fmt::Write;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::node::{self, run_pgbench, Node};
use super::plot::Bar;
use super::report::{median, num};
use super::systems::{Env, JoinVariant, Pair, System, PGBENCH_TABLES};
use super::{err, Config, Result};
use spock_tests::query_text;

/// One join of one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResult {
    /// System name.
    pub system: String,
    /// [`JoinVariant::name`].
    pub variant: String,
    /// Whether the subscriber had the schema before the clock started.
    pub schema_beforehand: bool,
    /// 1-based round.
    pub round: usize,
    /// pgbench scale of the provider's data.
    pub scale: u32,
    /// Rows copied (all pgbench tables; equal on both sides).
    pub rows: u64,
    /// Seconds to start the servers and load and prepare both sides.
    pub setup_s: f64,
    /// Seconds the statement that creates the subscription took.
    pub statement_s: f64,
    /// Seconds from right before that statement until the state was `ready`.
    pub seconds: f64,
    /// The states the poll saw, in order, with the seconds spent in each.
    pub phases: Vec<(String, f64)>,
    /// ERROR lines of the subscriber's log while the clock ran.
    #[serde(default)]
    pub subscriber_errors: Vec<String>,
}

fn log(sys: &str, variant: &str, round: usize, msg: &str) {
    eprintln!("[bench] round {round} {sys} join ({variant}): {msg}");
}

/// Seconds the join may take before the round fails.
fn timeout(cfg: &Config) -> Duration {
    Duration::from_secs(120 + 30 * u64::from(cfg.scale))
}

/// Starts a fresh pair, joins the subscriber to the provider with `variant`,
/// checks both sides are equal, stops the pair.
pub fn run_join(sys: &dyn System, variant: &JoinVariant, env: &Env, cfg: &Config, round: usize) -> Result<JoinResult> {
    let started = Instant::now();
    let pgbench = env.pg18.program("pgbench");
    let settings = sys.settings();
    let install = sys.install();
    let (p, s) = thread::scope(|sc| {
        let a = sc.spawn(|| node::start(install, "provider", &env.data_root, &settings, env.keep));
        let b = sc.spawn(|| node::start(install, "subscriber", &env.data_root, &settings, env.keep));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    let pair = Pair { provider: p?, subscriber: s? };
    load(&pair, &pgbench, cfg, variant.schema_beforehand)?;
    sys.join_provider(&pair)?;
    sys.join_subscriber(&pair)?;
    pair.provider.execute("CHECKPOINT")?;
    pair.subscriber.execute("CHECKPOINT")?;
    let setup_s = started.elapsed().as_secs_f64();

    let start_sql = sys.join_start_sql(&pair, variant);
    let state_sql = sys.join_state_sql();
    let mut c = pair.subscriber.connect()?;
    let mut poll = pair.subscriber.connect()?;
    let log_pos = pair.subscriber.log_offset();
    let t0 = Instant::now();
    c.batch_execute(&start_sql)
        .map_err(|e| super::Error(format!("{start_sql}: {}", spock_tests::describe_pg_error(&e))))?;
    let statement_s = t0.elapsed().as_secs_f64();
    let deadline = t0 + timeout(cfg);
    let mut seen: Vec<(String, Instant)> = Vec::new();
    let ready = loop {
        let state = query_text(&mut poll, state_sql)?;
        let now = Instant::now();
        if seen.last().is_none_or(|(s, _)| *s != state) {
            seen.push((state.clone(), now));
        }
        if state == "ready" {
            break now;
        }
        if now > deadline {
            return err(format!(
                "join not ready after {:?} (states seen: {})\n--- subscriber log ---\n{}\n--- provider log ---\n{}",
                timeout(cfg),
                seen.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(" → "),
                pair.subscriber.log_tail(30),
                pair.provider.log_tail(15)
            ));
        }
        thread::sleep(cfg.poll);
    };
    let seconds = (ready - t0).as_secs_f64();
    let subscriber_errors = error_lines(&pair.subscriber, log_pos);
    // time in each state: from when it was first seen to when the next one was (the
    // first state from the start of the clock)
    let mut phases = Vec::new();
    for (i, (state, at)) in seen.iter().enumerate() {
        if state == "ready" {
            break;
        }
        let from = if i == 0 { t0 } else { *at };
        let to = seen.get(i + 1).map(|(_, t)| *t).unwrap_or(ready);
        phases.push((state.clone(), (to - from).as_secs_f64()));
    }
    if let Some(sql) = sys.join_ready_sql() {
        let t = Instant::now();
        pair.subscriber.execute(sql)?;
        if t.elapsed() > Duration::from_secs(2) {
            return err(format!("{sql} took {:.1} s after the state was ready", t.elapsed().as_secs_f64()));
        }
    }
    let rows = check_equal(&pair)?;
    let r = JoinResult {
        system: sys.name().to_string(),
        variant: variant.name.to_string(),
        schema_beforehand: variant.schema_beforehand,
        round,
        scale: cfg.scale,
        rows,
        setup_s,
        statement_s,
        seconds,
        phases,
        subscriber_errors,
    };
    log(
        sys.name(),
        variant.name,
        round,
        &format!(
            "{} rows ready in {:.2} s ({}; setup {:.1} s)",
            rows,
            seconds,
            r.phases.iter().map(|(s, t)| format!("{s} {t:.2} s")).collect::<Vec<_>>().join(", "),
            setup_s
        ),
    );
    for e in &r.subscriber_errors {
        log(sys.name(), variant.name, round, &format!("subscriber log: {e}"));
    }
    Ok(r)
}

/// pgbench data on the provider; on the subscriber the same tables and primary
/// keys without rows when `schema` (else nothing).
fn load(pair: &Pair, pgbench: &Path, cfg: &Config, schema: bool) -> Result<()> {
    let scale = cfg.scale.to_string();
    let init: Vec<String> = ["-i", "-q", "-s", &scale].iter().map(|s| s.to_string()).collect();
    // d(rop), t(ables), p(rimary keys): what -i creates, without g(enerate data)
    let structure: Vec<String> = ["-i", "-q", "-I", "dtp", "-s", &scale].iter().map(|s| s.to_string()).collect();
    let (a, b) = thread::scope(|sc| {
        let a = sc.spawn(|| run_pgbench(&pair.provider, pgbench, &init));
        let b =
            sc.spawn(|| if schema { run_pgbench(&pair.subscriber, pgbench, &structure).map(|_| ()) } else { Ok(()) });
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    a?;
    b
}

/// The ERROR (and worse) lines of the subscriber's log since `pos`.
fn error_lines(sub: &Node, pos: usize) -> Vec<String> {
    sub.log_since(pos)
        .lines()
        .filter(|l| [" ERROR: ", " FATAL: ", " PANIC: "].iter().any(|k| l.contains(k)))
        .take(10)
        .map(|l| l.to_string())
        .collect()
}

/// Every pgbench table has the same rows on both sides (count, and the balance sum
/// of the accounts), and the same indexes; returns the rows of all tables.
fn check_equal(pair: &Pair) -> Result<u64> {
    let counts =
        PGBENCH_TABLES.iter().map(|t| format!("(SELECT count(*) FROM {t})")).collect::<Vec<_>>().join(" || ',' || ");
    let sql = format!(
        "SELECT {counts} || ';' || (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ';' ||
                (SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid::regclass::text LIKE 'pgbench%')"
    );
    let p = pair.provider.query_text(&sql)?;
    let s = pair.subscriber.query_text(&sql)?;
    let rows: u64 = p.split(';').next().unwrap_or("").split(',').filter_map(|v| v.parse::<u64>().ok()).sum();
    if p != s || rows == 0 {
        return err(format!(
            "JOIN RESULT DIFFERS: tables {} (row counts; balance sum; indexes): provider {p}; subscriber {s}",
            PGBENCH_TABLES.join(",")
        ));
    }
    Ok(rows)
}

/// A system and variant: one row of the join table.
#[derive(Debug, Clone, PartialEq)]
struct JoinEntry {
    system: String,
    variant: String,
    schema_beforehand: bool,
}

impl JoinEntry {
    fn label(&self) -> String {
        format!("{} ({})", self.system, self.variant)
    }
}

fn entries(results: &[JoinResult]) -> Vec<JoinEntry> {
    let mut out: Vec<JoinEntry> = Vec::new();
    for r in results {
        let e =
            JoinEntry { system: r.system.clone(), variant: r.variant.clone(), schema_beforehand: r.schema_beforehand };
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

fn rounds_of<'a>(results: &'a [JoinResult], e: &'a JoinEntry) -> impl Iterator<Item = &'a JoinResult> {
    results.iter().filter(move |r| r.system == e.system && r.variant == e.variant)
}

/// Median seconds of each phase, in the order the phases were first seen; a phase
/// a round did not see (shorter than the poll interval) counts 0 there.
fn phase_medians(results: &[JoinResult], e: &JoinEntry) -> Vec<(String, f64)> {
    let mut names: Vec<String> = Vec::new();
    for r in rounds_of(results, e) {
        for (n, _) in &r.phases {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let v: Vec<f64> = rounds_of(results, e)
                .map(|r| r.phases.iter().filter(|(p, _)| *p == n).fold(0.0, |a, (_, t)| a + t))
                .collect();
            let m = median(&v);
            (n, m)
        })
        .collect()
}

fn base_seconds(results: &[JoinResult], entries: &[JoinEntry]) -> Option<f64> {
    entries
        .iter()
        .find(|e| e.system == "native")
        .map(|b| median(&rounds_of(results, b).map(|r| r.seconds).collect::<Vec<_>>()))
}

/// The Markdown table of the join rounds.
pub fn table(results: &[JoinResult]) -> String {
    let entries = entries(results);
    let base = base_seconds(results, &entries);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| system (variant) | subscriber before the clock | rows copied | seconds to ready: median (min–max), lower is better | time ÷ native (lower is better) | phases: median seconds |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- |");
    for e in &entries {
        let v: Vec<f64> = rounds_of(results, e).map(|r| r.seconds).collect();
        let m = median(&v);
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let secs = if v.len() > 1 { format!("{} ({}–{})", num(m), num(lo), num(hi)) } else { num(m) };
        let ratio =
            base.map(|b| m / b).filter(|r| r.is_finite()).map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into());
        let rows = rounds_of(results, e).map(|r| r.rows).max().unwrap_or(0);
        let phases =
            phase_medians(results, e).iter().map(|(n, t)| format!("{n} {}", num(*t))).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {rows} | {secs} | {ratio} | {phases} |",
            e.label(),
            if e.schema_beforehand { "pgbench schema, no rows" } else { "empty database" }
        );
    }
    for r in results.iter().filter(|r| !r.subscriber_errors.is_empty()) {
        let _ = writeln!(
            out,
            "\n**errors** in the subscriber's log, {} ({}) round {} ({} s, included above): {}",
            r.system,
            r.variant,
            r.round,
            num(r.seconds),
            r.subscriber_errors.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join("; ")
        );
    }
    out
}

/// Medians and ratios for the JSON summary.
pub fn summary_json(results: &[JoinResult]) -> Value {
    let entries = entries(results);
    let base = base_seconds(results, &entries);
    json!(entries
        .iter()
        .map(|e| {
            let m = median(&rounds_of(results, e).map(|r| r.seconds).collect::<Vec<_>>());
            json!({
                "system": e.system,
                "variant": e.variant,
                "schema_beforehand": e.schema_beforehand,
                "median_seconds": m,
                "time_ratio_vs_native": base.map(|b| m / b).filter(|r| r.is_finite()),
                "phase_medians_s": phase_medians(results, e).into_iter().map(|(n, t)| (n, json!(t))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect::<Vec<_>>())
}

/// Bars of the seconds to ready, one per system and variant.
pub fn bars(results: &[JoinResult]) -> Vec<Bar> {
    let entries = entries(results);
    let mut systems: Vec<&str> = Vec::new();
    for e in &entries {
        if !systems.contains(&e.system.as_str()) {
            systems.push(&e.system);
        }
    }
    entries
        .iter()
        .map(|e| {
            let v: Vec<f64> = rounds_of(results, e).map(|r| r.seconds).collect();
            Bar {
                label: e.label(),
                value: median(&v),
                rounds: v,
                color: systems.iter().position(|s| *s == e.system).unwrap_or(0),
            }
        })
        .collect()
}
