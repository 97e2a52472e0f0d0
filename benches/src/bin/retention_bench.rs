//! Do kept deleted row versions stay bounded? (docs/apply.md, "How long deleted
//! versions are kept".) Two PostgreSQL 18 nodes replicating both ways, each
//! running the delete mix of `replication-bench` (delete a random key of table
//! `q`, upsert another) at a fixed rate for a long while; every few seconds, on
//! each node: the table's dead and live tuples (cumulative statistics), its size
//! with indexes, and the age of the node's retention horizon (`spock.retention`).
//! Bounded means: the second half of the run keeps no more than the first.
//!
//! ```text
//! retention-bench [--secs 600] [--rate 100] [--keys 20000] [--sample 10]
//!                 [--retention S] [--out DIR]
//! ```
//!
//! `--retention` sets `spock.deleted_version_retention` (default: the default,
//! 600 s; 0 keeps nothing: the control). Writes `retention.md` and `retention.json`
//! under `--out` (default target/bench-results). Build and install first
//! (`bash scripts/bench.sh --help` installs a release build; or
//! `source scripts/env.sh; install_extension --release`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spock_tests::fixtures::{mutual_pair, sync_mesh};
use spock_tests::{Cluster, NodeOptions, TestNode};

struct Options {
    secs: u64,
    rate: u64,
    keys: u64,
    sample: u64,
    retention: Option<u64>,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        secs: 600,
        rate: 100,
        keys: 20_000,
        sample: 10,
        retention: None,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!(
            "usage: retention-bench [--secs 600] [--rate 100] [--keys 20000] [--sample 10] [--retention S] [--out DIR]"
        );
        std::process::exit(2)
    };
    for pair in args.chunks(2) {
        let Some(v) = pair.get(1) else { usage() };
        let n = v.parse::<u64>().ok();
        match (pair[0].as_str(), n) {
            ("--secs", Some(n)) => o.secs = n.max(1),
            ("--rate", Some(n)) => o.rate = n.max(1),
            ("--keys", Some(n)) => o.keys = n.max(2),
            ("--sample", Some(n)) => o.sample = n.max(1),
            ("--retention", Some(n)) => o.retention = Some(n),
            ("--out", _) => o.out = PathBuf::from(v),
            _ => usage(),
        }
    }
    o
}

/// One sample of one node.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    node: String,
    /// Seconds since the load started.
    at_s: f64,
    dead: i64,
    live: i64,
    /// Table and index size, kB.
    size_kb: i64,
    /// Seconds the retention horizon is behind (`now() - kept_since`; 0 without one).
    horizon_s: f64,
    /// Autovacuum runs of the table so far.
    autovacuums: i64,
}

fn sample(n: &TestNode, at_s: f64) -> Sample {
    let row: String = n
        .query_one(
            "SELECT concat_ws(' ', s.n_dead_tup, s.n_live_tup,
                    pg_total_relation_size('q') / 1024, s.autovacuum_count,
                    coalesce((SELECT extract(epoch FROM now() - r.kept_since) FROM spock.retention r), 0))
               FROM pg_stat_user_tables s WHERE s.relname = 'q'",
        )
        .expect("sample");
    let f: Vec<&str> = row.split(' ').collect();
    let int = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Sample {
        node: n.name.clone(),
        at_s,
        dead: int(0),
        live: int(1),
        size_kb: int(2),
        autovacuums: int(3),
        horizon_s: f.get(4).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0),
    }
}

fn pgbench(n: &TestNode, script: &Path, o: &Options) -> Child {
    let mut cmd = Command::new(n.install().program("pgbench"));
    cmd.args(["-n", "-f"])
        .arg(script)
        .args(["-D", &format!("keys={}", o.keys), "-c", "2", "-j", "1"])
        .args(["-R", &o.rate.to_string(), "-T", &o.secs.to_string()])
        .args(["-h", &n.root().display().to_string(), "-p", &n.port.to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start pgbench")
}

fn main() {
    let o = options();
    let mut settings = vec![("autovacuum_naptime".to_string(), "10s".to_string())];
    if let Some(r) = o.retention {
        settings.push(("spock.deleted_version_retention".into(), r.to_string()));
    }
    let opts = |name: &str| {
        let mut n = NodeOptions::new(name);
        for (k, v) in &settings {
            n = n.setting(k, v);
        }
        n
    };
    let c = Cluster::start(vec![opts("n1"), opts("n2")]).expect("start nodes");
    let (a, b) = (c.node(0), c.node(1));
    mutual_pair(a, b);
    for n in [a, b] {
        n.execute("CREATE TABLE q(id int PRIMARY KEY, v int, pad text); SELECT spock.repset_add_table('default', 'q')")
            .expect("table q");
    }
    sync_mesh(&[a, b]);
    a.execute(&format!("INSERT INTO q SELECT g, 0, repeat('q', 40) FROM generate_series(1, {}, 2) g", o.keys))
        .expect("initial rows");
    sync_mesh(&[a, b]);

    let script = std::env::temp_dir().join(format!("spock-retention-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set d random(1, :keys)\n\\set i random(1, :keys)\nBEGIN;\nDELETE FROM q WHERE id = :d;\n\
         INSERT INTO q VALUES (:i, :d, repeat('q', 40)) ON CONFLICT (id) DO UPDATE SET v = excluded.v;\nEND;\n",
    )
    .expect("write the pgbench script");
    eprintln!(
        "[retention-bench] {} s of the delete mix at {} tx/s on each of 2 nodes, {} keys, retention {}",
        o.secs,
        o.rate,
        o.keys,
        o.retention.map_or("default".to_string(), |r| format!("{r} s"))
    );
    let started = Instant::now();
    let mut clients = [pgbench(a, &script, &o), pgbench(b, &script, &o)];
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(o.secs) {
        if started.elapsed() >= next {
            let at = started.elapsed().as_secs_f64();
            for n in [a, b] {
                let s = sample(n, at);
                eprintln!(
                    "[retention-bench] {:>5.0} s {}: dead {:>6}, live {:>6}, size {:>6} kB, horizon {:>5.1} s behind, autovacuums {}",
                    s.at_s, s.node, s.dead, s.live, s.size_kb, s.horizon_s, s.autovacuums
                );
                samples.push(s);
            }
            next += Duration::from_secs(o.sample);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in clients.iter_mut() {
        let status = child.wait().expect("pgbench");
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!("[retention-bench] pgbench failed: {err}");
            std::process::exit(1);
        }
    }
    let _ = std::fs::remove_file(&script);
    sync_mesh(&[a, b]);
    let digest = "SELECT count(*) || ' ' || coalesce(sum(v), 0) || ' ' || coalesce(sum(id), 0) FROM q";
    let (da, db) = (a.query_text(digest).expect("digest"), b.query_text(digest).expect("digest"));

    let report = report(&o, &samples, da == db);
    std::fs::create_dir_all(&o.out).expect("output directory");
    std::fs::write(o.out.join("retention.md"), &report).expect("write retention.md");
    let json = serde_json::json!({
        "secs": o.secs, "rate_per_node": o.rate, "keys": o.keys,
        "retention": o.retention, "identical": da == db, "samples": samples,
    });
    std::fs::write(o.out.join("retention.json"), serde_json::to_string_pretty(&json).expect("json"))
        .expect("write retention.json");
    println!("{report}");
    drop(c);
    if da != db {
        eprintln!("[retention-bench] the nodes differ: n1 {da}, n2 {db}");
        std::process::exit(1);
    }
}

fn report(o: &Options, samples: &[Sample], identical: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Kept deleted versions under a steady delete rate\n\n{} s, 2 nodes replicating both ways, each running the delete mix at {} tx/s ({} keys, half present); `spock.deleted_version_retention` {}; autovacuum_naptime 10 s. Tables identical at the end: {}.\n",
        o.secs,
        o.rate,
        o.keys,
        o.retention.map_or("default (600 s)".to_string(), |r| format!("{r} s")),
        if identical { "yes" } else { "NO" }
    );
    let _ = writeln!(
        out,
        "| node | half | dead tuples: max | dead tuples: mean | size kB: max | size kB: at end | horizon behind, s: max | mean |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    let half = o.secs as f64 / 2.0;
    for node in ["n1", "n2"] {
        for (label, first) in [("first", true), ("second", false)] {
            let s: Vec<&Sample> =
                samples.iter().filter(|s| s.node == node && (s.at_s < half) == first && s.at_s > 0.0).collect();
            if s.is_empty() {
                continue;
            }
            let max = |f: fn(&Sample) -> f64| s.iter().map(|x| f(x)).fold(f64::MIN, f64::max);
            let mean = |f: fn(&Sample) -> f64| s.iter().map(|x| f(x)).sum::<f64>() / s.len() as f64;
            let _ = writeln!(
                out,
                "| {node} | {label} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
                max(|x| x.dead as f64),
                mean(|x| x.dead as f64),
                max(|x| x.size_kb as f64),
                s.last().map_or(0, |x| x.size_kb),
                max(|x| x.horizon_s),
                mean(|x| x.horizon_s)
            );
        }
    }
    out
}
