//! Decode throughput of `spock_output` against PostgreSQL's `pgoutput` on the same
//! WAL, in the same run: one PostgreSQL 18 server, one table in a spock replication
//! set and in a publication, one slot per plugin, the same changes decoded by each
//! with `pg_logical_slot_peek_binary_changes` (peek: every round decodes the same
//! WAL), rounds interleaved A/B/A/B, medians reported as a ratio.
//!
//! `decode-bench [--quick]` prints a Markdown table and writes
//! `target/bench-results/decode.json`. Quick mode is a smoke test, not a measurement.

use std::time::Instant;

use spock_tests::{NodeOptions, TestNode};

struct Workload {
    rows: i64,
    small_txns: i64,
    rounds: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let w = if quick {
        Workload { rows: 5_000, small_txns: 1_000, rounds: 3 }
    } else {
        Workload { rows: 200_000, small_txns: 20_000, rounds: 7 }
    };
    if let Err(e) = run(&w, quick) {
        eprintln!("decode-bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(w: &Workload, quick: bool) -> Result<(), Box<dyn std::error::Error>> {
    let node = TestNode::start(
        NodeOptions::new("bench")
            .setting("shared_buffers", "'256MB'")
            .setting("logical_decoding_work_mem", "'256MB'")
            .setting("max_wal_size", "'4GB'"),
    )?;
    node.execute(&format!("CREATE EXTENSION spock; SELECT spock.node_create('bench', '{}')", node.dsn("postgres")))?;
    node.execute("CREATE TABLE acc(aid int PRIMARY KEY, bid int, abalance int, filler char(84))")?;
    node.execute("SELECT spock.repset_add_table('default', 'acc')")?;
    node.execute("CREATE PUBLICATION pub FOR TABLE acc")?;
    node.execute("SELECT pg_create_logical_replication_slot('s_spock', 'spock_output')")?;
    node.execute("SELECT pg_create_logical_replication_slot('s_pgoutput', 'pgoutput')")?;

    // The same WAL for both: one bulk insert, one bulk update, many one-row transactions.
    node.execute(&format!("INSERT INTO acc SELECT g, g % 10, 0, '' FROM generate_series(1, {}) g", w.rows))?;
    node.execute("UPDATE acc SET abalance = abalance + 1 WHERE aid % 2 = 0")?;
    node.execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{} LOOP UPDATE acc SET abalance = abalance - 1 WHERE aid = i; COMMIT; END LOOP; END $$",
        w.small_txns
    ))?;
    let changes = w.rows + w.rows / 2 + w.small_txns;

    let spock_args = |binary: bool| {
        let want = if binary { "1" } else { "0" };
        format!(
            "'min_proto_version', '4', 'max_proto_version', '5', 'startup_params_format', '1', \
             'binary.want_internal_basetypes', '{want}', 'binary.want_binary_basetypes', '{want}', \
             'binary.basetypes_major_version', '1800', 'spock.replication_set_names', 'default', \
             'spock_version_num', '60000'"
        )
    };
    let variants: Vec<(&str, String)> = vec![
        ("pgoutput (text)", "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s_pgoutput', NULL, NULL, 'proto_version', '4', 'publication_names', 'pub')".into()),
        ("spock_output (binary)", format!("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s_spock', NULL, NULL, {})", spock_args(true))),
        ("spock_output (text)", format!("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s_spock', NULL, NULL, {})", spock_args(false))),
    ];
    let mut client = node.connect()?;
    // warm up caches once per variant
    for (_, sql) in &variants {
        client.query_one(sql.as_str(), &[])?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..w.rounds {
        for (i, (_, sql)) in variants.iter().enumerate() {
            let start = Instant::now();
            client.query_one(sql.as_str(), &[])?;
            times[i].push(start.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let base = changes as f64 / medians[0];
    println!(
        "decode throughput, {changes} row changes, median of {} interleaved rounds{}",
        w.rounds,
        if quick { " (quick mode: smoke test only)" } else { "" }
    );
    println!();
    println!("| plugin | changes/s | ratio vs pgoutput |");
    println!("|---|---:|---:|");
    let mut json = Vec::new();
    for ((name, _), m) in variants.iter().zip(&medians) {
        let rate = changes as f64 / m;
        println!("| {name} | {rate:.0} | {:.2} |", rate / base);
        json.push(
            serde_json::json!({"plugin": name, "changes_per_s": rate, "ratio_vs_pgoutput": rate / base, "median_s": m}),
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("decode.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"changes": changes, "rounds": w.rounds, "quick": quick, "results": json}),
        )?,
    )?;
    Ok(())
}
