//! `spock.recover_lost_node(name)` (sql/api/operations.sql) on real servers: a node
//! dies for good while one survivor is behind on its changes; afterwards the
//! survivors are identical, hold every change of the lost node that one of them
//! had (with its commit timestamps), keep replicating with each other, and nothing
//! of the lost node is left on them.

use spock_tests::fixtures::{count, full_mesh, sync_mesh, sync_through};
use spock_tests::{Cluster, TestNode};

fn rows(n: &TestNode) -> String {
    n.query_text("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t").unwrap()
}

/// Commit timestamps of the rows the lost node wrote.
fn commit_times(n: &TestNode) -> String {
    n.query_text(
        "SELECT string_agg(id || '@' || pg_xact_commit_timestamp(xmin), ',' ORDER BY id) FROM t WHERE id <= 100",
    )
    .unwrap()
}

/// What of node n1 node `n` still has: subscriptions, slots, origins, node rows.
fn traces_of_n1(n: &TestNode) -> String {
    n.query_text(
        "SELECT format('subs %s slots %s origins %s nodes %s',
                (SELECT count(*) FROM spock.subscription WHERE sub_name LIKE '%n1%'),
                (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n1%'),
                (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE '%n1%'),
                (SELECT count(*) FROM spock.node WHERE node_name = 'n1'))",
    )
    .unwrap()
}

#[test]
fn after_a_node_is_lost_the_survivors_hold_every_change_of_it_that_one_of_them_had() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    n1.execute("INSERT INTO t SELECT g, 'n1 early' FROM generate_series(1, 10) g").unwrap();
    sync_mesh(&[n1, n2, n3]);

    // n2's subscription to n1 is held back; n3 applies everything n1 writes.
    n2.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    n1.execute(
        "INSERT INTO t SELECT g, 'n1 late' FROM generate_series(11, 100) g;
         UPDATE t SET v = 'n1 updated' WHERE id <= 5;
         DELETE FROM t WHERE id IN (6, 7)",
    )
    .unwrap();
    sync_through(n1, n3);
    n2.execute("INSERT INTO t SELECT g, 'n2' FROM generate_series(201, 210) g").unwrap();
    n3.execute("INSERT INTO t SELECT g, 'n3' FROM generate_series(301, 310) g").unwrap();

    // Refused while n1 answers; an unknown node; on the lost node itself.
    let e = n2.query_text("SELECT count(*)::text FROM spock.recover_lost_node('n1')").unwrap_err().to_string();
    assert!(e.contains("55000") && e.contains("still answers"), "{e}");
    let e = n2.query_text("SELECT count(*)::text FROM spock.recover_lost_node('n9')").unwrap_err().to_string();
    assert!(e.contains("42704"), "{e}");
    let e = n1.query_text("SELECT count(*)::text FROM spock.recover_lost_node('n1')").unwrap_err().to_string();
    assert!(e.contains("55000"), "{e}");

    n1.kill9().unwrap();
    let report = n2
        .query_text(
            "SELECT string_agg(node || ' ' || action || ' ' || detail, E'\\n') FROM spock.recover_lost_node('n1')",
        )
        .unwrap();
    // n2 lacks 90 inserts, 5 updates and 2 deletes of n1: repaired from n3.
    assert!(report.contains("n2 repaired public.t: 97 rows from node n3"), "{report}");
    assert!(!report.contains("n3 repaired"), "n3 was ahead: {report}");

    sync_mesh(&[n2, n3]);
    assert_eq!(rows(n2), rows(n3));
    assert_eq!(count(n2, "SELECT count(*) FROM t WHERE v = 'n1 late'"), 90);
    assert_eq!(count(n2, "SELECT count(*) FROM t WHERE id <= 5 AND v = 'n1 updated'"), 5);
    assert_eq!(count(n2, "SELECT count(*) FROM t WHERE id IN (6, 7)"), 0);
    assert_eq!(commit_times(n2), commit_times(n3), "the lost node's commit timestamps");
    for n in [n2, n3] {
        assert_eq!(traces_of_n1(n), "subs 0 slots 0 origins 0 nodes 0", "on {}", n.name);
    }
    // The survivors go on replicating both ways.
    n2.execute("INSERT INTO t VALUES (400, 'n2 after')").unwrap();
    n3.execute("INSERT INTO t VALUES (401, 'n3 after')").unwrap();
    sync_mesh(&[n2, n3]);
    assert_eq!(rows(n2), rows(n3));
    assert_eq!(count(n3, "SELECT count(*) FROM t WHERE id >= 400"), 2);
}
