//! Global ids (#19 item 3, docs/multimaster.md): ids per second from a global
//! sequence (`spock.convert_sequence_to_global`) against `nextval` of an ordinary
//! bigint sequence, on one node, in one run. Per round, each sequence in turn
//! (alternating which goes first): pgbench for `--seconds` with `--clients`
//! clients running `SELECT nextval(...)`, then inserting rows keyed by it.
//!
//! ```text
//! ids-bench [--seconds 5] [--rounds 3] [--clients 2] [--out DIR]
//! ```
//!
//! Writes `ids.md` and `ids.json` under `--out` (default target/bench-results).
//! Build and install first (`source scripts/env.sh; install_extension --release`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use spock_tests::{Cluster, NodeOptions, TestNode};

const USAGE: &str = "ids-bench [--seconds 5] [--rounds 3] [--clients 2] [--out DIR]";

/// Transactions per second pgbench reports for `sql` on `n`.
fn tps(n: &TestNode, sql: &str, seconds: u64, clients: u64) -> f64 {
    let script = n.root().join("ids-bench.sql");
    std::fs::write(&script, format!("{sql}\n")).expect("script");
    let (c, t) = (clients.to_string(), seconds.to_string());
    let out = n
        .install()
        .command("pgbench")
        .args(["-n", "-c", &c, "-j", &c, "-T", &t, "-f"])
        .arg(&script)
        .arg(n.dsn("postgres"))
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let opts = spock_benches::named_options(USAGE, &["seconds", "rounds", "clients", "out"]);
    let num = |k: &str, d: u64| opts.get(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("--{k}: {v}")));
    let (seconds, rounds, clients) = (num("seconds", 5).max(1), num("rounds", 3).max(1), num("clients", 2).max(1));
    let out = opts
        .get("out")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"), PathBuf::from);

    let c = Cluster::start(vec![NodeOptions::new("n1")]).expect("start node");
    let n = c.node(0);
    n.execute(&format!(
        "CREATE EXTENSION spock; SELECT spock.node_create('n1', '{}');
         CREATE SEQUENCE plain_seq AS bigint; CREATE SEQUENCE global_seq AS bigint;
         SELECT spock.convert_sequence_to_global('global_seq');
         CREATE TABLE plain_rows(id bigint PRIMARY KEY DEFAULT nextval('plain_seq'), v int);
         CREATE TABLE global_rows(id bigint PRIMARY KEY DEFAULT nextval('global_seq'), v int);",
        n.dsn("postgres")
    ))
    .expect("setup");
    let workloads = [
        ("nextval", "SELECT nextval('plain_seq');", "SELECT nextval('global_seq');"),
        ("insert", "INSERT INTO plain_rows(v) VALUES (1);", "INSERT INTO global_rows(v) VALUES (1);"),
    ];
    let mut md = String::new();
    let _ = writeln!(md, "| workload ({clients} clients, {seconds} s, median of {rounds} rounds) | ordinary sequence, tx/s | global sequence, tx/s | global / ordinary |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let mut json = Vec::new();
    for (name, plain, global) in workloads {
        let (mut p, mut g, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let (a, b) = if r % 2 == 0 {
                (tps(n, plain, seconds, clients), tps(n, global, seconds, clients))
            } else {
                let b = tps(n, global, seconds, clients);
                (tps(n, plain, seconds, clients), b)
            };
            eprintln!("{name} round {}: ordinary {a:.0} tx/s, global {b:.0} tx/s ({:.3})", r + 1, b / a);
            p.push(a);
            g.push(b);
            ratios.push(b / a);
        }
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.3} |",
            median(p.clone()),
            median(g.clone()),
            median(ratios.clone())
        );
        json.push(serde_json::json!({"workload": name, "ordinary_tps": p, "global_tps": g, "ratio": ratios}));
    }
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::write(out.join("ids.md"), &md).expect("write ids.md");
    std::fs::write(out.join("ids.json"), serde_json::to_string_pretty(&json).unwrap()).expect("write ids.json");
    print!("{md}");
}
