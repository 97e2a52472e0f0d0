//! What does spock.table_diff() cost next to hashing the table? (#18 item 1:
//! docs/operations.md, "Finding divergence".) Two PostgreSQL 18 nodes replicating
//! both ways hold the same table of `--rows` rows (loaded on each in repair mode,
//! so nothing is replicated), then `--diffs` rows are changed on the second only
//! (updated, deleted, inserted). Per round, in one run:
//!
//! * the baseline: each node hashes its whole table once (`bit_xor` of the row
//!   hashes), both at the same time; the time until both are done;
//! * `spock.table_diff('big', 'n2')` on the first node: its time, the number of
//!   rows it reports, and the bytes it received from the peer (its DEBUG1 line).
//!
//! ```text
//! diff-bench [--rows 1000000] [--diffs 10] [--rounds 3] [--out DIR]
//! ```
//!
//! Writes `diff.md` and `diff.json` under `--out` (default target/bench-results).
//! Build and install first (`source scripts/env.sh; install_extension --release`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spock_tests::fixtures::mutual_pair;
use spock_tests::postgres;
use spock_tests::{Cluster, NodeOptions, TestNode};

struct Options {
    rows: u64,
    diffs: u64,
    rounds: usize,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        rows: 1_000_000,
        diffs: 10,
        rounds: 3,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: diff-bench [--rows 1000000] [--diffs 10] [--rounds 3] [--out DIR]");
        std::process::exit(2)
    };
    for pair in args.chunks(2) {
        let Some(v) = pair.get(1) else { usage() };
        let n = v.parse::<u64>().ok();
        match (pair[0].as_str(), n) {
            ("--rows", Some(n)) => o.rows = n.max(100),
            ("--diffs", Some(n)) => o.diffs = n.clamp(1, 1000),
            ("--rounds", Some(n)) => o.rounds = n.max(1) as usize,
            ("--out", _) => o.out = PathBuf::from(v),
            _ => usage(),
        }
    }
    o
}

/// One round's figures.
struct Round {
    hash_secs: f64,
    diff_secs: f64,
    reported: i64,
    received: u64,
}

/// Loads the same rows on `n` without replicating them.
fn load(n: &TestNode, rows: u64) {
    n.execute(&format!(
        "BEGIN; SELECT spock.repair_mode(true);
         INSERT INTO big SELECT g, g % 1000, md5(g::text), '2026-01-01'::timestamptz + g * interval '1 s'
           FROM generate_series(1, {rows}) g;
         COMMIT"
    ))
    .expect("load");
    n.execute("VACUUM ANALYZE big").expect("vacuum");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let o = options();
    let c = Cluster::start(vec![NodeOptions::new("n1"), NodeOptions::new("n2")]).expect("start nodes");
    let (a, b) = (c.node(0), c.node(1));
    mutual_pair(a, b);
    for n in [a, b] {
        n.execute(
            "CREATE TABLE big(id bigint PRIMARY KEY, a int NOT NULL, b text, c timestamptz);
             SELECT spock.repset_add_table('default', 'big')",
        )
        .expect("create table");
        load(n, o.rows);
    }
    // Diverge: a third updated, a third deleted, the rest inserted, on n2 only.
    let step = o.rows / (o.diffs + 1);
    for i in 1..=o.diffs {
        let id = i * step;
        let sql = match i % 3 {
            0 => format!("UPDATE big SET b = 'changed' WHERE id = {id}"),
            1 => format!("DELETE FROM big WHERE id = {id}"),
            _ => format!("INSERT INTO big VALUES ({}, 0, 'new', now())", o.rows + i),
        };
        b.execute(&format!("BEGIN; SELECT spock.repair_mode(true); {sql}; COMMIT")).expect("diverge");
    }
    let table_bytes: i64 = a.query_one("SELECT pg_table_size('big')").expect("size");

    let received = Arc::new(Mutex::new(0u64));
    let mut config = a.config("postgres");
    let sink = received.clone();
    config.notice_callback(move |n| {
        if std::env::var_os("DIFF_BENCH_VERBOSE").is_some() {
            eprintln!("{}", n.message());
        }
        if let Some(bytes) = n
            .message()
            .split("; ")
            .last()
            .and_then(|s| s.strip_suffix(" bytes from peer n2"))
            .and_then(|s| s.parse().ok())
        {
            *sink.lock().unwrap() = bytes;
        }
    });
    let mut client = config.connect(postgres::NoTls).expect("connect");
    client.batch_execute("SET client_min_messages = debug1").expect("set");

    let hash = "SELECT bit_xor(hashtextextended(ROW(t.a, t.b, t.c, t.id)::text, 0)) FROM ONLY big t";
    let mut rounds = Vec::new();
    for r in 0..o.rounds {
        let started = Instant::now();
        let sides: Vec<_> = [a, b]
            .into_iter()
            .map(|n| {
                let mut c = n.connect().expect("connect");
                std::thread::spawn(move || {
                    c.query_one(hash, &[]).expect("hash");
                })
            })
            .collect();
        for s in sides {
            s.join().expect("hash thread");
        }
        let hash_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let reported: i64 =
            client.query_one("SELECT count(*) FROM spock.table_diff('big', 'n2')", &[]).expect("table_diff").get(0);
        let diff_secs = started.elapsed().as_secs_f64();
        let got = *received.lock().unwrap();
        eprintln!(
            "round {}: hashing both sides {hash_secs:.3} s, table_diff {diff_secs:.3} s ({:.2}x), {reported} rows, {got} bytes from the peer",
            r + 1,
            diff_secs / hash_secs
        );
        rounds.push(Round { hash_secs, diff_secs, reported, received: got });
        std::thread::sleep(Duration::from_millis(100));
    }

    let hash_s = median(rounds.iter().map(|r| r.hash_secs).collect());
    let diff_s = median(rounds.iter().map(|r| r.diff_secs).collect());
    let bytes = median(rounds.iter().map(|r| r.received as f64).collect());
    let ratio = median(rounds.iter().map(|r| r.diff_secs / r.hash_secs).collect());
    let mut md = String::new();
    let _ = writeln!(md, "| metric (median of {} rounds) | value |", o.rounds);
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(md, "| rows per node | {} |", o.rows);
    let _ = writeln!(md, "| rows changed on one node | {} |", o.diffs);
    let _ = writeln!(md, "| rows reported | {} |", rounds[0].reported);
    let _ = writeln!(md, "| hashing the table on both nodes at once, s | {hash_s:.3} |");
    let _ = writeln!(md, "| spock.table_diff, s | {diff_s:.3} |");
    let _ = writeln!(md, "| table_diff / hashing (per round, median) | {ratio:.2} |");
    let _ = writeln!(md, "| bytes received from the peer | {bytes:.0} |");
    let _ = writeln!(md, "| table size (pg_table_size), bytes | {table_bytes} |");
    let _ = writeln!(md, "| received / table size | {:.3} % |", 100.0 * bytes / table_bytes as f64);
    std::fs::create_dir_all(&o.out).expect("out dir");
    std::fs::write(o.out.join("diff.md"), &md).expect("write diff.md");
    let json = serde_json::json!({
        "rows": o.rows, "diffs": o.diffs, "rounds": rounds.iter().map(|r| serde_json::json!({
            "hash_secs": r.hash_secs, "diff_secs": r.diff_secs, "reported": r.reported, "received_bytes": r.received
        })).collect::<Vec<_>>(), "table_bytes": table_bytes,
    });
    std::fs::write(o.out.join("diff.json"), serde_json::to_string_pretty(&json).unwrap()).expect("write diff.json");
    print!("{md}");
}
