//! Delta apply (#19 item 3, docs/multimaster.md): what marking counters for delta
//! apply costs replication, against the same table with plain columns, in one run.
//! A provider and a subscriber; per round and per table in turn: the subscription
//! is paused, pgbench adds to random counters on the provider (`--transactions`
//! per client, 2 clients), then the subscriber catches up. Reports the catch-up
//! rate (transactions applied per second) and the WAL the provider wrote per
//! transaction (REPLICA IDENTITY FULL logs the old row too).
//!
//! ```text
//! delta-bench [--transactions 5000] [--rounds 3] [--out DIR]
//! ```
//!
//! Writes `delta.md` and `delta.json` under `--out` (default target/bench-results).
//! Build and install first (`source scripts/env.sh; install_extension --release`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use spock_tests::fixtures::{subscribed_pair, sync_through};
use spock_tests::{Cluster, NodeOptions, TestNode};

const USAGE: &str = "delta-bench [--transactions 5000] [--rounds 3] [--out DIR]";

fn pgbench(n: &TestNode, table: &str, transactions: u64) {
    let script = n.root().join(format!("{table}.sql"));
    std::fs::write(
        &script,
        format!("\\set id random(1, 1000)\nUPDATE {table} SET balance = balance + 1, amount = amount + 0.5 WHERE id = :id;\n"),
    )
    .expect("script");
    let t = transactions.to_string();
    let out = n
        .install()
        .command("pgbench")
        .args(["-n", "-c", "2", "-j", "2", "-t", &t, "-f"])
        .arg(&script)
        .arg(n.dsn("postgres"))
        .output()
        .expect("pgbench");
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
}

fn lsn(n: &TestNode) -> i64 {
    n.query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").expect("lsn")
}

/// (catch-up transactions per second, WAL bytes per transaction) of one backlog.
fn round(p: &TestNode, s: &TestNode, table: &str, transactions: u64) -> (f64, f64) {
    s.execute("SELECT spock.sub_disable('sub_n2_n1', true)").expect("pause");
    let before = lsn(p);
    pgbench(p, table, transactions);
    let wal = (lsn(p) - before) as f64 / (2 * transactions) as f64;
    let started = Instant::now();
    s.execute("SELECT spock.sub_enable('sub_n2_n1', true)").expect("resume");
    sync_through(p, s);
    ((2 * transactions) as f64 / started.elapsed().as_secs_f64(), wal)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let opts = spock_benches::named_options(USAGE, &["transactions", "rounds", "out"]);
    let num = |k: &str, d: u64| opts.get(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("--{k}: {v}")));
    let (transactions, rounds) = (num("transactions", 5000).max(10), num("rounds", 3).max(1));
    let out = opts
        .get("out")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"), PathBuf::from);
    let c = Cluster::start(vec![NodeOptions::new("n1"), NodeOptions::new("n2")]).expect("start nodes");
    let (p, s) = (c.node(0), c.node(1));
    subscribed_pair(p, s);
    for n in [p, s] {
        n.execute(
            "CREATE TABLE c_plain(id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0, amount numeric NOT NULL DEFAULT 0);
             CREATE TABLE c_delta(id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0, amount numeric NOT NULL DEFAULT 0);
             ALTER TABLE c_delta REPLICA IDENTITY FULL;
             SELECT spock.repset_add_table('default', 'c_plain'); SELECT spock.repset_add_table('default', 'c_delta');
             SELECT spock.set_delta_apply('c_delta', 'balance', replicate := false);
             SELECT spock.set_delta_apply('c_delta', 'amount', replicate := false);",
        )
        .expect("tables");
    }
    p.execute(
        "INSERT INTO c_plain(id) SELECT g FROM generate_series(1, 1000) g;
         INSERT INTO c_delta(id) SELECT g FROM generate_series(1, 1000) g",
    )
    .expect("rows");
    sync_through(p, s);
    let mut results: Vec<(&str, Vec<(f64, f64)>)> = vec![("plain", Vec::new()), ("delta", Vec::new())];
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let table = if i == 0 { "c_plain" } else { "c_delta" };
            let (rate, wal) = round(p, s, table, transactions);
            eprintln!("round {}: {table}: catch-up {rate:.0} tx/s, {wal:.0} WAL bytes per transaction", r + 1);
            results[i].1.push((rate, wal));
        }
    }
    let rate = |i: usize| median(results[i].1.iter().map(|x| x.0).collect());
    let wal = |i: usize| median(results[i].1.iter().map(|x| x.1).collect());
    let ratios: Vec<f64> = results[1].1.iter().zip(&results[0].1).map(|(d, p)| d.0 / p.0).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| {} transactions per backlog, median of {rounds} rounds | plain columns | delta columns | delta / plain |",
        2 * transactions
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let _ = writeln!(md, "| catch-up, tx/s | {:.0} | {:.0} | {:.2} |", rate(0), rate(1), median(ratios.clone()));
    let _ = writeln!(
        md,
        "| provider WAL per transaction, bytes | {:.0} | {:.0} | {:.2} |",
        wal(0),
        wal(1),
        wal(1) / wal(0)
    );
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::write(out.join("delta.md"), &md).expect("write delta.md");
    let json = serde_json::json!(results
        .iter()
        .map(|(name, v)| serde_json::json!({"table": name, "rounds": v.iter().map(|(r, w)| serde_json::json!({"catch_up_tps": r, "wal_per_tx": w})).collect::<Vec<_>>()}))
        .collect::<Vec<_>>());
    std::fs::write(out.join("delta.json"), serde_json::to_string_pretty(&json).unwrap()).expect("write delta.json");
    print!("{md}");
}
