//! Falling behind and coming back (docs/operations.md "Falling behind").
//!
//! - A provider that invalidates a subscriber's slot (`max_slot_wal_keep_size`
//!   reached while the subscriber was away) makes the subscriber's worker disable
//!   the subscription with the reason, instead of failing every few seconds
//!   forever: `spock.sub_show_status` says `slot_invalidated`, with the slot's
//!   `wal_status` and `invalidation_reason` as the provider reports them.
//! - `spock.sub_resync` brings such a subscription back without losing anything on
//!   either side: a new slot, the provider's rows merged into the subscriber's by
//!   last-update-wins (rows written on the subscriber stay, rows deleted on the
//!   provider meanwhile go), then streaming from the new slot: on two nodes, and in
//!   a three-node mesh where the lagging node wrote its own rows meanwhile.
//! - An error that may pass (the provider is down) keeps the worker retrying, each
//!   time a little later, and `sub_show_status` shows the error, how many times it
//!   happened and when the next attempt is.

use std::time::Duration;

use spock_tests::fixtures::{full_mesh, mutual_pair, next_commit_is_later, sync_mesh, sync_through};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

/// A node whose slots lose their WAL soon: 128 MB (eight WAL segments) beyond
/// what they need.
fn forgetful(name: &str) -> NodeOptions {
    NodeOptions::new(name).setting("max_slot_wal_keep_size", "128MB").setting("spock.restart_delay_default", "200")
}

/// Writes on `provider` until the slot `slot` is invalidated: rows, a WAL switch
/// and a checkpoint per round, checked after each; the subscribers in `keep_up`
/// apply each round before the checkpoint, so that their slots stay within the
/// limit.
fn lose_slot(provider: &TestNode, slot: &str, keep_up: &[&TestNode]) {
    wait_for(
        "the provider's slot invalidated",
        Duration::from_secs(120),
        || {
            provider
                .execute(
                    "INSERT INTO t SELECT g, 'lost ' || g
                       FROM generate_series(1000000 + (SELECT count(*) FROM t), 1000000 + (SELECT count(*) FROM t) + 99) g",
                )
                .unwrap();
            provider.execute("SELECT pg_switch_wal()").unwrap();
            for n in keep_up {
                sync_through(provider, n);
            }
            provider.execute("CHECKPOINT").unwrap();
            provider
                .query_one::<Option<String>>(&format!(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))
                .unwrap()
        },
        Some("lost".to_string()),
    );
}

/// Runs the CloudNativePG monitoring query `name` of deploy/cnpg/common/monitoring.yaml
/// on `n` (after its predicate_query, when it has one): its rows, each column as
/// text, by column name.
fn monitoring_query(n: &TestNode, name: &str) -> Vec<std::collections::HashMap<String, String>> {
    use yaml_rust2::YamlLoader;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cnpg/common/monitoring.yaml");
    let config = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let queries = config[0]["data"]["queries.yaml"].as_str().expect("data.queries.yaml");
    let queries = YamlLoader::load_from_str(queries).unwrap();
    let q = &queries[0][name];
    let mut client = n.connect().unwrap();
    if let Some(p) = q["predicate_query"].as_str() {
        let holds: bool = client.query_one(p, &[]).unwrap().get(0);
        assert!(holds, "the predicate of {name} is false");
    }
    let sql = q["query"].as_str().unwrap_or_else(|| panic!("no query {name}"));
    let rows = client.simple_query(sql).unwrap_or_else(|e| panic!("{name}: {e}"));
    rows.into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Waits (at most `secs` seconds) until `sub_show_status(sub)` of `n` says `want`
/// in `column`.
fn wait_status(n: &TestNode, sub: &str, column: &str, want: &str, what: &str, secs: u64) {
    wait_for(what, Duration::from_secs(secs), || status(n, sub, column), Some(want.to_string()));
}

/// The number just before `what` in log line `line`.
fn number_before(line: &str, what: &str) -> i64 {
    let at = line.find(what).unwrap_or_else(|| panic!("{what:?} not in {line:?}"));
    line[..at].split_whitespace().last().unwrap().parse().unwrap()
}

fn status(n: &TestNode, sub: &str, column: &str) -> Option<String> {
    n.query_one::<Option<String>>(&format!("SELECT {column}::text FROM spock.sub_show_status('{sub}')")).unwrap()
}

#[test]
fn a_lost_slot_disables_the_subscription_and_says_why() {
    let c = Cluster::start(vec![forgetful("n1"), forgetful("n2")]).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    n1.execute("INSERT INTO t VALUES (1, 'before')").unwrap();
    sync_through(n1, n2);
    let slot = status(n2, "sub_n2_n1", "slot_name").unwrap();
    // n2 is away (its worker stopped) while n1 writes past the slot's limit.
    n2.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    lose_slot(n1, &slot, &[]);
    let offset = n2.log_offset();
    n2.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_status(
        n2,
        "sub_n2_n1",
        "last_error_reason",
        "slot_invalidated",
        "the subscription disabled by its worker",
        60,
    );
    assert_eq!(status(n2, "sub_n2_n1", "status").as_deref(), Some("disabled"));
    assert_eq!(status(n2, "sub_n2_n1", "last_error_sqlstate").as_deref(), Some("55000"));
    assert_eq!(status(n2, "sub_n2_n1", "slot_wal_status").as_deref(), Some("lost"));
    assert_eq!(status(n2, "sub_n2_n1", "slot_invalidation_reason").as_deref(), Some("wal_removed"));
    assert!(status(n2, "sub_n2_n1", "last_error").unwrap().contains(&slot));
    assert!(n2
        .query_one::<bool>("SELECT NOT sub_enabled FROM spock.subscription WHERE sub_name = 'sub_n2_n1'")
        .unwrap());
    // The view says the same; the log has one WARNING with the way back, no ERROR.
    assert_eq!(
        n2.query_one::<String>(
            "SELECT last_error_reason FROM spock.subscription_status WHERE subscription_name = 'sub_n2_n1'"
        )
        .unwrap(),
        "slot_invalidated"
    );
    n2.wait_for_log(offset, "spock.sub_resync('sub_n2_n1')", 1, Duration::from_secs(10));
    // The CloudNativePG monitoring queries say it too: on n2 the subscription, on
    // n1 the slot.
    let subs = monitoring_query(n2, "spock_subscriptions");
    let sub = subs.iter().find(|r| r["subscription_name"] == "sub_n2_n1").unwrap();
    assert_eq!((sub["slot_lost"].as_str(), sub["disabled"].as_str(), sub["replicating"].as_str()), ("1", "1", "0"));
    let slots = monitoring_query(n1, "spock_slots");
    let lost = slots.iter().find(|r| r["slot_name"] == slot).unwrap();
    assert_eq!(lost["wal_status"], "3");
    let other = monitoring_query(n2, "spock_slots");
    assert!(other.iter().all(|r| r["wal_status"] == "0"), "{other:?}");
    let log = n2.log_since(offset);
    assert!(!log.contains("ERROR:") && !log.contains("FATAL:"), "errors logged:\n{log}");
    // The other direction is not affected.
    n2.execute("INSERT INTO t VALUES (2, 'from n2')").unwrap();
    sync_through(n2, n1);
    assert_eq!(n1.query_one::<i64>("SELECT count(*) FROM t WHERE id = 2").unwrap(), 1);
}

#[test]
fn a_provider_that_is_down_is_retried_ever_later_and_the_error_shown() {
    let c = Cluster::start(vec![
        NodeOptions::new("n1"),
        NodeOptions::new("n2").setting("spock.restart_delay_default", "100").setting("spock.restart_delay_max", "800"),
    ])
    .unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    n1.stop().unwrap();
    wait_for(
        "three failed attempts recorded",
        Duration::from_secs(60),
        || n2.query_one::<i64>("SELECT coalesce(error_count, 0) FROM spock.sub_show_status('sub_n2_n1')").unwrap() >= 3,
        true,
    );
    assert_eq!(status(n2, "sub_n2_n1", "last_error_sqlstate").as_deref(), Some("08006"));
    assert!(status(n2, "sub_n2_n1", "last_error").unwrap().contains("could not connect"));
    assert_eq!(status(n2, "sub_n2_n1", "last_error_reason"), None);
    // Enabled, and a next attempt while no worker runs.
    wait_for(
        "a next attempt announced",
        Duration::from_secs(30),
        || {
            n2.query_one::<bool>(
                "SELECT status = 'down' AND next_attempt_at IS NOT NULL FROM spock.sub_show_status('sub_n2_n1')",
            )
            .unwrap()
        },
        true,
    );
    n1.restart().unwrap();
    wait_status(n2, "sub_n2_n1", "status", "replicating", "replicating again", 60);
    n1.execute("INSERT INTO t VALUES (1, 'after')").unwrap();
    sync_through(n1, n2);
    assert_eq!(n2.query_one::<String>("SELECT v FROM t WHERE id = 1").unwrap(), "after");
    // The slot's state as the worker reads it from the provider.
    wait_status(n2, "sub_n2_n1", "slot_wal_status", "reserved", "the slot's wal_status shown", 30);
}

/// md5 of table t, ordered by key.
fn md5(n: &TestNode) -> String {
    n.query_one::<String>("SELECT md5(coalesce(string_agg(id || ':' || coalesce(v, '-'), ',' ORDER BY id), '')) FROM t")
        .unwrap()
}

fn value(n: &TestNode, id: i64) -> Option<String> {
    n.query_one::<Option<String>>(&format!("SELECT (SELECT v FROM t WHERE id = {id})")).unwrap()
}

/// n2's subscription to n1 loses its slot while both write; `sub_resync` merges.
fn lose_and_resync(nodes: &[&TestNode]) {
    let (n1, n2) = (nodes[0], nodes[1]);
    n1.execute("INSERT INTO t SELECT g, 'orig ' || g FROM generate_series(1, 20) g").unwrap();
    sync_mesh(nodes);
    let slot = status(n2, "sub_n2_n1", "slot_name").unwrap();
    n2.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    // While n2 does not hear from n1: n1 inserts, updates and deletes; n2 writes
    // its own rows and races n1 on rows 7 (n2 later) and 8 (n1 later).
    n1.execute("INSERT INTO t SELECT g, 'n1 new ' || g FROM generate_series(101, 110) g").unwrap();
    n1.execute("UPDATE t SET v = 'n1 upd' WHERE id IN (1, 2, 3, 7)").unwrap();
    n1.execute("DELETE FROM t WHERE id IN (4, 5)").unwrap();
    n2.execute("UPDATE t SET v = 'n2 upd' WHERE id = 8").unwrap();
    next_commit_is_later(n2, n1);
    n1.execute("UPDATE t SET v = 'n1 later' WHERE id = 8").unwrap();
    next_commit_is_later(n1, n2);
    n2.execute("UPDATE t SET v = 'n2 later' WHERE id = 7").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 own ' || g FROM generate_series(201, 210) g").unwrap();
    n2.execute("DELETE FROM t WHERE id = 9").unwrap();
    if let Some(n3) = nodes.get(2) {
        n3.execute("INSERT INTO t SELECT g, 'n3 own ' || g FROM generate_series(301, 305) g").unwrap();
        n3.execute("UPDATE t SET v = 'n3 upd' WHERE id = 10").unwrap();
        sync_through(n3, n1);
        sync_through(n3, n2);
        // n1 deletes a row n3 wrote: n2 has it from n3 and never hears of the delete.
        n1.execute("DELETE FROM t WHERE id = 301").unwrap();
    }
    sync_through(n2, n1);
    lose_slot(n1, &slot, &nodes[2..]);
    // n2 deletes a row n1 wrote before, and n1 does not hear of it before the
    // resync: the merge must not bring n1's older row back.
    n1.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    n2.execute("DELETE FROM t WHERE id = 11").unwrap();
    n2.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_status(
        n2,
        "sub_n2_n1",
        "last_error_reason",
        "slot_invalidated",
        "the subscription disabled by its worker",
        60,
    );
    let offset = n2.log_offset();
    assert!(n2.query_one::<bool>("SELECT spock.sub_resync('sub_n2_n1')").unwrap());
    // (bounded: a resync that keeps failing fails the test instead of hanging it)
    n2.execute("SET statement_timeout = '120s'; SELECT spock.sub_wait_for_sync('sub_n2_n1')").unwrap();
    wait_status(n2, "sub_n2_n1", "status", "replicating", "replicating again", 60);
    n2.wait_for_log(offset, "resync done", 1, Duration::from_secs(10));
    assert_eq!(value(n2, 11), None);
    let subs = monitoring_query(n2, "spock_subscriptions");
    let sub = subs.iter().find(|r| r["subscription_name"] == "sub_n2_n1").unwrap();
    assert_eq!((sub["slot_lost"].as_str(), sub["replicating"].as_str()), ("0", "1"), "{sub:?}");
    n1.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    wait_status(n1, "sub_n1_n2", "status", "replicating", "n1 replicating from n2 again", 60);
    // Exactly once from the new slot: written after the resync, seen once.
    n1.execute("INSERT INTO t VALUES (500, 'after resync')").unwrap();
    n1.execute("UPDATE t SET v = 'n1 after' WHERE id = 1").unwrap();
    sync_mesh(nodes);
    let want = md5(n1);
    for n in nodes {
        assert_eq!(md5(n), want, "table t of node {} differs from n1's", n.name);
    }
    assert_eq!(value(n2, 101).as_deref(), Some("n1 new 101"));
    assert_eq!(value(n2, 2).as_deref(), Some("n1 upd"));
    assert_eq!(value(n2, 1).as_deref(), Some("n1 after"));
    assert_eq!(value(n2, 4), None);
    assert_eq!(value(n2, 5), None);
    assert_eq!(value(n2, 7).as_deref(), Some("n2 later"));
    assert_eq!(value(n2, 8).as_deref(), Some("n1 later"));
    assert_eq!(value(n2, 9), None);
    assert_eq!(value(n1, 11), None);
    assert_eq!(value(n1, 205).as_deref(), Some("n2 own 205"));
    assert_eq!(value(n2, 500).as_deref(), Some("after resync"));
    assert_eq!(
        n2.query_one::<i64>("SELECT count(*) FROM t").unwrap(),
        n1.query_one::<i64>("SELECT count(*) FROM t").unwrap()
    );
    if nodes.len() > 2 {
        assert_eq!(value(n2, 301), None);
        assert_eq!(value(n2, 302).as_deref(), Some("n3 own 302"));
        assert_eq!(value(n2, 10).as_deref(), Some("n3 upd"));
    }
    let log = n2.log_since(offset);
    assert!(!log.contains("ERROR:") && !log.contains("FATAL:"), "errors logged during the resync:\n{log}");
    // The merge itself did the work (not the stream): n1's rows applied, and the
    // rows n1 deleted (4, 5, and 301 in the mesh) removed.
    let done = log.lines().find(|l| l.contains("resync done")).unwrap();
    assert!(number_before(done, " rows from the provider applied") >= 15, "{done}");
    assert_eq!(
        number_before(done, " rows deleted on the provider removed"),
        if nodes.len() > 2 { 3 } else { 2 },
        "{done}"
    );
    // Row 11, deleted here, is known deleted (this node applied n1's version).
    let table = log.lines().find(|l| l.contains("resync: public.t:")).unwrap();
    assert_eq!(number_before(table, " rows deleted here kept deleted"), 1, "{table}");
}

#[test]
fn sub_resync_brings_a_lost_slot_back_without_losing_writes_on_either_node() {
    let c = Cluster::start(vec![forgetful("n1"), forgetful("n2")]).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    lose_and_resync(&[n1, n2]);
}

#[test]
fn sub_resync_in_a_three_node_mesh_keeps_the_lagging_nodes_own_rows() {
    let c = Cluster::start(vec![forgetful("n1"), forgetful("n2"), forgetful("n3")]).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    lose_and_resync(&[n1, n2, n3]);
}

#[test]
fn a_replication_set_dropped_on_the_provider_disables_the_subscription_with_the_reason() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    n1.execute("SELECT spock.repset_create('extra')").unwrap();
    n2.execute("SELECT spock.sub_add_repset('sub_n2_n1', 'extra')").unwrap();
    wait_status(n2, "sub_n2_n1", "status", "replicating", "replicating with the new set", 60);
    n2.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    n1.execute("SELECT spock.repset_drop('extra')").unwrap();
    let offset = n2.log_offset();
    n2.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_status(
        n2,
        "sub_n2_n1",
        "last_error_reason",
        "replication_set_missing",
        "the subscription disabled by its worker",
        60,
    );
    assert_eq!(status(n2, "sub_n2_n1", "status").as_deref(), Some("disabled"));
    assert_eq!(status(n2, "sub_n2_n1", "last_error_sqlstate").as_deref(), Some("42704"));
    n2.wait_for_log(offset, "sub_remove_repset('sub_n2_n1', <set>)", 1, Duration::from_secs(10));
    // The way out the message gives works.
    n2.execute("SELECT spock.sub_remove_repset('sub_n2_n1', 'extra')").unwrap();
    n2.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_status(n2, "sub_n2_n1", "status", "replicating", "replicating again", 60);
    n1.execute("INSERT INTO t VALUES (1, 'back')").unwrap();
    sync_through(n1, n2);
    assert_eq!(value(n2, 1).as_deref(), Some("back"));
}
