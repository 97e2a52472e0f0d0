//! spock.table_diff() and spock.mesh_diff(): the rows in which two nodes' copies of
//! a table differ, with both versions, their commit timestamps and origins;
//! differences replication is still carrying are not reported.

use std::time::Duration;

use spock_tests::fixtures::{full_mesh, mutual_pair, sync_mesh};
use spock_tests::{wait_for, Cluster, TestNode};

/// table_diff of t on `n` against `peer`, one line per row: key, status, v here,
/// v there, who wrote each.
fn diff(n: &TestNode, peer: &str, recheck: &str) -> String {
    n.query_text(&format!(
        "SELECT coalesce(string_agg(format('%s %s %s/%s %s/%s', key->>'id', status, local_row->>'v', peer_row->>'v',
                                           local_origin, peer_origin), E'\\n' ORDER BY (key->>'id')::int), '')
           FROM spock.table_diff('t', '{peer}', '{recheck}')"
    ))
    .unwrap()
}

fn sqlstate(n: &TestNode, sql: &str) -> String {
    match n.connect().unwrap().batch_execute(sql) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

#[test]
fn table_diff_finds_each_kind_of_difference_and_only_those() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    n1.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20000) g").unwrap();
    n1.execute("ANALYZE t").unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(diff(n1, "n2", "10 s"), "", "identical copies");

    // Diverge by hand: repair mode keeps these changes on their node.
    n2.execute(
        "BEGIN; SELECT spock.repair_mode(true);
         UPDATE t SET v = 'changed on n2' WHERE id = 5;
         DELETE FROM t WHERE id = 7;
         INSERT INTO t VALUES (30000, 'only on n2');
         COMMIT",
    )
    .unwrap();
    n1.execute("BEGIN; SELECT spock.repair_mode(true); INSERT INTO t VALUES (40000, 'only on n1'); COMMIT").unwrap();
    sync_mesh(&[n1, n2]);
    let expected = "5 differs row 5/changed on n2 n1/n2\n\
                    7 only_local row 7/ n1/\n\
                    30000 only_peer /only on n2 /n2\n\
                    40000 only_local only on n1/ n1/";
    assert_eq!(diff(n1, "n2", "10 s"), expected);
    // The peer as a connection string; from the other side, the mirror image.
    assert_eq!(diff(n1, &n2.dsn("postgres"), "0"), expected);
    assert_eq!(
        diff(n2, "n1", "10 s"),
        "5 differs changed on n2/row 5 n2/n1\n\
         7 only_peer /row 7 /n1\n\
         30000 only_local only on n2/ n2/\n\
         40000 only_peer /only on n1 /n1"
    );
    // Commit timestamps are those of the writes.
    let ts_ok: bool = n1
        .query_one(
            "SELECT bool_and(coalesce(local_commit_ts, peer_commit_ts) > now() - interval '10 min')
               FROM spock.table_diff('t', 'n2')",
        )
        .unwrap();
    assert!(ts_ok);

    // A composite key of two types, one row differing.
    for n in [n1, n2] {
        n.execute("CREATE TABLE ck(a text, b int, v text, PRIMARY KEY (a, b)); SELECT spock.repset_add_table('default', 'ck')")
            .unwrap();
        n.execute("BEGIN; SELECT spock.repair_mode(true); INSERT INTO ck SELECT 'k' || g % 7, g, 'x' FROM generate_series(1, 500) g; COMMIT")
            .unwrap();
    }
    n2.execute("BEGIN; SELECT spock.repair_mode(true); UPDATE ck SET v = 'y' WHERE a = 'k3' AND b = 10; COMMIT")
        .unwrap();
    let ck: String =
        n1.query_text("SELECT string_agg(key::text || ' ' || status, ',') FROM spock.table_diff('ck', 'n2')").unwrap();
    assert_eq!(ck, r#"{"a": "k3", "b": 10} differs"#);

    // mesh_diff: every replicated table against every peer.
    let summary: String =
        n1.query_text("SELECT string_agg(format('%s %s %s %s %s %s', relation, peer, only_local, only_peer, differs, coalesce(error, '-')), ',') FROM spock.mesh_diff()").unwrap();
    assert_eq!(summary, "ck n2 0 0 1 -,t n2 2 1 1 -");
}

#[test]
fn rows_replication_is_still_carrying_are_not_reported() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    n1.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g").unwrap();
    sync_mesh(&[n1, n2]);
    // n2's apply of n1's next transaction waits on a row lock held here: when the
    // tables are hashed, n2 does not have it yet.
    let mut locker = n2.connect().unwrap();
    locker.batch_execute("BEGIN; SELECT 1 FROM t WHERE id = 10 FOR UPDATE").unwrap();
    n1.execute("UPDATE t SET v = 'late' WHERE id = 10; INSERT INTO t VALUES (5000, 'late too')").unwrap();
    let apply_waits =
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'spock apply%' AND wait_event_type = 'Lock'";
    wait_for(
        "n2's apply to wait on the lock",
        Duration::from_secs(60),
        || n2.query_one::<bool>(apply_waits).unwrap(),
        true,
    );
    assert_eq!(
        diff(n1, "n2", "0"),
        "10 differs late/row 10 n1/n1\n5000 only_local late too/ n1/",
        "without the re-check"
    );

    // With it: the lock goes once table_diff waits for n2 to catch up, and the rows
    // it found are then the same on both nodes.
    let mut watcher = n2.connect().unwrap();
    let release = std::thread::spawn(move || {
        let waiting = "SELECT count(*) > 0 FROM pg_stat_activity
                        WHERE application_name = 'spock table_diff' AND query LIKE 'CALL spock.wait_for_sync_event%'";
        let started = std::time::Instant::now();
        while !watcher.query_one(waiting, &[]).unwrap().get::<_, bool>(0) {
            assert!(started.elapsed() < Duration::from_secs(60), "table_diff never waited for n2");
            std::thread::yield_now();
        }
        locker.batch_execute("COMMIT").unwrap();
    });
    assert_eq!(diff(n1, "n2", "60 s"), "", "re-checked once n2 applied what n1 had");
    release.join().unwrap();
    assert_eq!(n2.query_text("SELECT v FROM t WHERE id = 5000").unwrap(), "late too");
}

#[test]
fn table_diff_refuses_what_it_cannot_compare_and_is_not_for_public() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    assert_eq!(sqlstate(n1, "SELECT * FROM spock.table_diff('t', 'nowhere')"), "42704");
    assert_eq!(
        sqlstate(n1, "SELECT * FROM spock.table_diff('t', 'host=127.0.0.1 port=1 dbname=x connect_timeout=2')"),
        "08006"
    );
    n1.execute("CREATE TABLE nokey(a int, b text)").unwrap();
    assert_eq!(sqlstate(n1, "SELECT * FROM spock.table_diff('nokey', 'n2')"), "55000");
    n1.execute("CREATE TABLE here_only(a int PRIMARY KEY)").unwrap();
    assert_eq!(sqlstate(n1, "SELECT * FROM spock.table_diff('here_only', 'n2')"), "42P01");
    n2.execute("CREATE TABLE other_key(a int, b int PRIMARY KEY)").unwrap();
    n1.execute("CREATE TABLE other_key(a int PRIMARY KEY, b int)").unwrap();
    assert_eq!(sqlstate(n1, "SELECT * FROM spock.table_diff('other_key', 'n2')"), "55000");
    // A plain role may not read a peer through the node's connection string.
    n1.execute("CREATE ROLE plain LOGIN; GRANT SELECT ON t TO plain").unwrap();
    let mut plain = n1.connect_as("postgres", "plain").unwrap();
    let e = plain.batch_execute("SELECT * FROM spock.table_diff('t', 'n2')").unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42501"));
    let e = plain.batch_execute("SELECT * FROM spock.mesh_diff()").unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42501"));
}

/// Commit timestamp and writing node of row `id` of t on `n`, as table_diff shows
/// writers (the node, or this node's subscription origin).
fn version(n: &TestNode, id: i32) -> String {
    n.query_text(&format!("SELECT pg_xact_commit_timestamp(xmin)::text FROM t WHERE id = {id}")).unwrap()
}

#[test]
fn table_repair_makes_rows_equal_with_the_sources_versions_and_replicates_nothing() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    n1.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g").unwrap();
    sync_mesh(&[n1, n2, n3]);
    n2.execute("UPDATE t SET v = 'by n2' WHERE id = 5").unwrap();
    n3.execute("UPDATE t SET v = 'by n3' WHERE id = 6").unwrap();
    sync_mesh(&[n1, n2, n3]);
    // n1 diverges on its own.
    n1.execute(
        "BEGIN; SELECT spock.repair_mode(true);
         UPDATE t SET v = 'broken' WHERE id IN (5, 6);
         DELETE FROM t WHERE id = 7;
         INSERT INTO t VALUES (500, 'stray');
         COMMIT",
    )
    .unwrap();
    // A column only n1 has keeps its values (updated rows) or gets its default
    // (inserted ones).
    n1.execute("BEGIN; SELECT spock.repair_mode(true); ALTER TABLE t ADD COLUMN note text DEFAULT 'mine'; COMMIT")
        .unwrap();
    n1.execute("BEGIN; SELECT spock.repair_mode(true); UPDATE t SET note = 'kept' WHERE id = 5; COMMIT").unwrap();
    let n3_before = n3.query_text("SELECT string_agg(xmin::text, ',' ORDER BY id) FROM t").unwrap();
    let plan = "SELECT string_agg(format('%s %s %s', key->>'id', action, coalesce(origin, '-')), ',' ORDER BY (key->>'id')::int)
                  FROM spock.table_repair('t', 'n2', dry_run := true)";
    assert_eq!(n1.query_text(plan).unwrap(), "5 updated n2,6 updated n3,7 inserted n1,500 deleted -");
    assert_eq!(diff(n1, "n2", "10 s").lines().count(), 4, "a dry run changes nothing");

    let done: String = n1
        .query_text("SELECT string_agg(action, ',' ORDER BY (key->>'id')::int) FROM spock.table_repair('t', 'n2')")
        .unwrap();
    assert_eq!(done, "updated,updated,inserted,deleted");
    assert_eq!(diff(n1, "n2", "10 s"), "", "equal after the repair");
    assert_eq!(diff(n1, "n3", "10 s"), "");
    // Each row carries the version it has on the source: commit timestamp and
    // writer, so that last-update-wins decides later changes as there.
    for id in [5, 6] {
        assert_eq!(version(n1, id), version(n2, id), "commit timestamp of row {id}");
    }
    assert_eq!(
        diff_origins(n1),
        "5 n2,6 n3",
        "writers as recorded on n1 (row 7 was written by n1 itself: its time is the repair's)"
    );
    assert_eq!(
        n1.query_text("SELECT string_agg(id || ' ' || note, ',' ORDER BY id) FROM t WHERE id IN (5, 7)").unwrap(),
        "5 kept,7 mine"
    );
    // Nothing of the repair was replicated.
    sync_mesh(&[n1, n2, n3]);
    assert_eq!(n3.query_text("SELECT string_agg(xmin::text, ',' ORDER BY id) FROM t").unwrap(), n3_before);

    // Later changes resolve as on the other nodes.
    n3.execute("UPDATE t SET v = 'later' WHERE id = 5").unwrap();
    sync_mesh(&[n1, n2, n3]);
    let all = "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t";
    assert_eq!(n1.query_text(all).unwrap(), n2.query_text(all).unwrap());
    assert_eq!(n1.query_text(all).unwrap(), n3.query_text(all).unwrap());
    assert_eq!(n1.query_text("SELECT v FROM t WHERE id = 5").unwrap(), "later");
}

/// The writer of rows 5 and 6 on `n` as table_diff reports it (against itself:
/// every row agrees, so read it through the origin function directly).
fn diff_origins(n: &TestNode) -> String {
    n.query_text(
        "SELECT string_agg(t.id || ' ' || coalesce(n.node_name::text, '?'), ',' ORDER BY t.id)
           FROM t CROSS JOIN LATERAL pg_xact_commit_timestamp_origin(t.xmin) o
           LEFT JOIN pg_replication_origin r ON r.roident = o.roident
           LEFT JOIN spock.subscription s ON s.sub_slot_name = r.roname
           LEFT JOIN spock.node n ON n.node_id = s.sub_origin
          WHERE t.id IN (5, 6)",
    )
    .unwrap()
}

/// What of node n3 node `n` still has: subscriptions, slots, origins, node rows.
fn traces_of_n3(n: &TestNode) -> String {
    n.query_text(
        "SELECT format('subs %s slots %s origins %s nodes %s',
                (SELECT count(*) FROM spock.subscription WHERE sub_name LIKE '%n3%'),
                (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n3%'),
                (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE '%n3%'),
                (SELECT count(*) FROM spock.node WHERE node_name = 'n3'))",
    )
    .unwrap()
}

#[test]
fn remove_node_leaves_no_subscription_slot_or_origin_of_it_on_any_node() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    n3.execute("INSERT INTO t SELECT g, 'from n3' FROM generate_series(1, 10) g").unwrap();
    sync_mesh(&[n1, n2, n3]);
    let refused = n1.query_text("CALL spock.remove_node('n3', 'x')").map(|_| ()).map_err(|e| e.to_string());
    assert!(refused.unwrap_err().contains("55000"), "run on the node that leaves");
    n3.execute(&format!("CALL spock.remove_node('n3', '{}')", n3.dsn("postgres"))).unwrap();
    for n in [n1, n2] {
        assert_eq!(traces_of_n3(n), "subs 0 slots 0 origins 0 nodes 0", "on {}", n.name);
    }
    assert_eq!(
        n3.query_text(
            "SELECT format('%s %s %s', (SELECT count(*) FROM spock.subscription), (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'spk%'), (SELECT count(*) FROM spock.node))"
        )
        .unwrap(),
        "0 0 0"
    );
    assert_eq!(n3.query_text("SELECT count(*)::text FROM t").unwrap(), "10", "its rows stay");
    // The others still replicate both ways, and n3's writes reach nobody.
    n3.execute("INSERT INTO t VALUES (100, 'after')").unwrap();
    n1.execute("INSERT INTO t VALUES (101, 'n1')").unwrap();
    n2.execute("INSERT INTO t VALUES (102, 'n2')").unwrap();
    sync_mesh(&[n1, n2]);
    let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM t WHERE id > 99";
    assert_eq!(n1.query_text(ids).unwrap(), "101,102");
    assert_eq!(n2.query_text(ids).unwrap(), "101,102");
}
