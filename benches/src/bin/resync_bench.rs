//! The way back from a lost slot (#20, docs/operations.md "Falling behind"): what
//! `spock.sub_resync` costs against copying the data again, in one run.
//!
//! A provider n1 with table `acc` (`--rows`, pgbench-accounts-like), a subscriber
//! n2 replicating it, and an empty node n3. Per round:
//! - copy: n3 subscribes with `synchronize_data := true` (what the old way back
//!   did after a TRUNCATE), timed from `sub_create` to `sub_wait_for_sync`;
//! - resync: n2's subscription is stopped, n1 updates `--changed` percent of the
//!   rows, n2's slot is dropped on n1 (as `max_slot_wal_keep_size` would have
//!   invalidated it), then `spock.sub_resync` on n2, timed to `sub_wait_for_sync`;
//!   n2's table is then checked equal to n1's.
//!
//! Reports the median of `--rounds` of each and their ratio.
//!
//! ```text
//! resync-bench [--rows 200000] [--changed 1] [--rounds 3] [--out DIR]
//! ```
//!
//! Writes `resync.md` and `resync.json` under `--out` (default target/bench-results).
//! Build and install first (`source scripts/env.sh; install_extension --release`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use spock_tests::fixtures::{setup_node, subscribe, sync_through, wait_replicating};
use spock_tests::{Cluster, NodeOptions, TestNode};

const USAGE: &str = "resync-bench [--rows 200000] [--changed 1] [--rounds 3] [--out DIR]";

const TABLE: &str =
    "CREATE TABLE acc(id int PRIMARY KEY, bid int NOT NULL, balance int NOT NULL, filler char(84) NOT NULL DEFAULT '')";

fn md5(n: &TestNode) -> String {
    n.query_one("SELECT md5(string_agg(id || ':' || balance, ',' ORDER BY id)) FROM acc").expect("md5")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds to copy the table into empty n3 through a new subscription.
fn copy_round(p: &TestNode, n3: &TestNode, r: u64) -> f64 {
    let name = format!("copy_{r}");
    n3.execute("TRUNCATE acc").expect("empty n3");
    let started = Instant::now();
    n3.execute(&format!(
        "SELECT spock.sub_create('{name}', '{}', synchronize_data := true, forward_origins := '{{}}')",
        p.dsn("postgres")
    ))
    .expect("sub_create");
    n3.execute(&format!("SET statement_timeout = '600s'; SELECT spock.sub_wait_for_sync('{name}')"))
        .expect("wait for sync");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(md5(n3), md5(p), "n3's copy differs");
    n3.execute(&format!("SELECT spock.sub_drop('{name}')")).expect("sub_drop");
    secs
}

/// Seconds `sub_resync` takes to bring n2 back after its slot was lost while n1
/// changed `changed` rows.
fn resync_round(p: &TestNode, s: &TestNode, rows: u64, changed: u64, r: u64) -> f64 {
    let slot: String = s
        .query_one("SELECT sub_slot_name::text FROM spock.subscription WHERE sub_name = 'sub_n2_n1'")
        .expect("slot name");
    s.execute("SELECT spock.sub_disable('sub_n2_n1', true)").expect("stop n2");
    let step = (rows / changed.max(1)).max(1);
    p.execute(&format!("UPDATE acc SET balance = balance + {} WHERE id % {step} = {}", r + 1, r % step))
        .expect("changes");
    p.execute(&format!(
        "SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .expect("lose the slot");
    let offset = s.log_offset();
    let started = Instant::now();
    s.execute("SELECT spock.sub_resync('sub_n2_n1')").expect("sub_resync");
    s.execute("SET statement_timeout = '600s'; SELECT spock.sub_wait_for_sync('sub_n2_n1')").expect("wait for sync");
    let secs = started.elapsed().as_secs_f64();
    wait_replicating(s, 1);
    sync_through(p, s);
    assert_eq!(md5(s), md5(p), "n2 differs from n1 after the resync");
    // Where the time went, as the worker logs it.
    for line in s.log_since(offset).lines().filter(|l| l.contains("resync: public.acc")) {
        eprintln!("  {}", line.split("LOG:  ").nth(1).unwrap_or(line));
    }
    secs
}

fn main() {
    let opts = spock_benches::named_options(USAGE, &["rows", "changed", "rounds", "out"]);
    let num = |k: &str, d: u64| opts.get(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("--{k}: {v}")));
    let (rows, percent, rounds) =
        (num("rows", 200_000).max(100), num("changed", 1).clamp(1, 100), num("rounds", 3).max(1));
    let changed = rows * percent / 100;
    let out = opts
        .get("out")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"), PathBuf::from);
    let c = Cluster::start(vec![NodeOptions::new("n1"), NodeOptions::new("n2"), NodeOptions::new("n3")])
        .expect("start nodes");
    let (p, s, n3) = (c.node(0), c.node(1), c.node(2));
    for n in [p, s, n3] {
        setup_node(n);
        n.execute(TABLE).expect("table");
        n.execute("SELECT spock.repset_add_table('default', 'acc')").expect("set");
    }
    p.execute(&format!(
        "INSERT INTO acc(id, bid, balance) SELECT g, g / 100000 + 1, 0 FROM generate_series(1, {rows}) g"
    ))
    .expect("rows");
    subscribe(s, p);
    wait_replicating(s, 1);
    s.execute("SELECT spock.sub_resync_table('sub_n2_n1', 'acc')").expect("first copy");
    s.execute("SELECT spock.table_wait_for_sync('sub_n2_n1', 'acc')").expect("first copy done");
    sync_through(p, s);
    assert_eq!(md5(s), md5(p));
    let (mut copy, mut resync) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let c = copy_round(p, n3, r);
        let m = resync_round(p, s, rows, changed, r);
        eprintln!("round {}: copy {c:.2} s, resync ({changed} rows changed) {m:.2} s", r + 1);
        copy.push(c);
        resync.push(m);
    }
    let ratios: Vec<f64> = resync.iter().zip(&copy).map(|(m, c)| m / c).collect();
    let mut md = String::new();
    let _ =
        writeln!(md, "| {rows} rows, {changed} changed while the slot was lost, median of {rounds} rounds | seconds |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(md, "| copy into an empty node (`sub_create(synchronize_data)`) | {:.2} |", median(copy.clone()));
    let _ = writeln!(md, "| `sub_resync` (merge) | {:.2} |", median(resync.clone()));
    let _ = writeln!(md, "| resync / copy | {:.2} |", median(ratios.clone()));
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::write(out.join("resync.md"), &md).expect("write resync.md");
    let json =
        serde_json::json!({"rows": rows, "changed": changed, "copy_s": copy, "resync_s": resync, "ratio": ratios});
    std::fs::write(out.join("resync.json"), serde_json::to_string_pretty(&json).unwrap()).expect("write resync.json");
    print!("{md}");
}
