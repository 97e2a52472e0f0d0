//! The apply worker's memory stays flat while the tables it writes are altered
//! under it: each relcache invalidation of a replicated table rebuilds the
//! worker's mapping of it (input functions, prepared defaults) and its executor
//! state, and the old ones must be freed, not left in `CacheMemoryContext`.
//!
//! The subscriber's `t` has a column the provider lacks, with a default (prepared
//! per mapping) and an array column (whose input function caches state in the
//! mapping's memory). Each round alters `t` on the subscriber, then replicates one
//! row into it, so every round rebuilds the mapping. The worker's memory contexts
//! are logged (`pg_log_backend_memory_contexts`) after a warm-up and after the
//! rounds; their grand total must not grow with the rounds.
//! `SPOCK_APPLY_REBUILDS` sets the number of rounds (default 600).

use std::time::{Duration, Instant};

use spock_tests::fixtures::sync_through;
use spock_tests::{Cluster, TestNode};

fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, f: impl FnMut() -> T, want: T) {
    spock_tests::wait_for(what, Duration::from_secs(60), f, want)
}

/// Logs the memory contexts of process `pid` and returns their grand total.
fn logged_total(s: &TestNode, pid: i32) -> u64 {
    let at = s.log_offset();
    assert!(s.query_one::<bool>(&format!("SELECT pg_catalog.pg_log_backend_memory_contexts({pid})")).unwrap());
    s.wait_for_log(at, "Grand total: ", 1, Duration::from_secs(30));
    let log = s.log_since(at);
    let line = log.lines().find(|l| l.contains("Grand total: ")).expect("grand total line");
    let after = &line[line.find("Grand total: ").expect("found") + "Grand total: ".len()..];
    after.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no total in {line:?}"))
}

/// Resident memory of process `pid` in kB.
fn vm_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn apply_memory_is_flat_across_relation_rebuilds() {
    let rounds: i64 = std::env::var("SPOCK_APPLY_REBUILDS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let warmup = 100;
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    for n in &c.nodes {
        n.execute("CREATE EXTENSION spock").unwrap();
        n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    }
    p.execute("CREATE TABLE t(id int PRIMARY KEY, tags int[])").unwrap();
    s.execute("CREATE TABLE t(id int PRIMARY KEY, tags int[], extra text DEFAULT 'd0')").unwrap();
    p.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}', synchronize_data := false)", p.dsn("postgres"))).unwrap();
    wait_for(
        "replicating",
        || s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".into(),
    );
    let pid = s.query_one::<i32>("SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'spock apply'").unwrap();
    let mut pc = p.connect().unwrap();
    let mut sc = s.connect().unwrap();
    let mut round = |i: i64| {
        sc.batch_execute(&format!("ALTER TABLE t ALTER COLUMN extra SET DEFAULT 'd{i}'")).unwrap();
        pc.batch_execute(&format!("INSERT INTO t VALUES ({i}, ARRAY[{i}, {i}])")).unwrap();
        // The provider's sync event comes after the row in the same stream.
        sync_through(p, s);
        let got: i64 = sc.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
        assert_eq!(got, i, "round {i}: the row is applied");
    };
    for i in 1..=warmup {
        round(i);
    }
    let (before, rss_before) = (logged_total(s, pid), vm_rss_kb(pid));
    let started = Instant::now();
    for i in warmup + 1..=warmup + rounds {
        round(i);
    }
    let (after, rss_after) = (logged_total(s, pid), vm_rss_kb(pid));
    println!(
        "{rounds} rebuilds in {:?}: memory contexts {before} -> {after} bytes, VmRSS {rss_before} -> {rss_after} kB",
        started.elapsed()
    );
    // Each round applied with the default of its own mapping: every round rebuilt it.
    assert_eq!(
        s.query_one::<i64>("SELECT count(*) FROM t WHERE extra = 'd' || id").unwrap(),
        warmup + rounds,
        "rows inserted with the default of their round"
    );
    assert_eq!(
        s.query_one::<i32>("SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'spock apply'").unwrap(),
        pid,
        "the same worker throughout"
    );
    // A mapping's memory is a few kB: a leak of it per round would grow the total by
    // rounds x that. Allow 256 kB of noise (allocator blocks, caches filling up).
    assert!(
        after <= before + 256 * 1024,
        "the apply worker's memory grew from {before} to {after} bytes over {rounds} relation rebuilds"
    );
}
