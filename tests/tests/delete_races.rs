//! A DELETE is a row version: a DELETE on one node and a concurrent UPDATE or INSERT
//! of the same key on another end the same on both, decided by last-update-wins over
//! both versions (spock_core::conflict: `update_deleted`, `insert_deleted`). The
//! deleted version is the dead tuple the DELETE left in the table. The race is made
//! deterministic by holding both directions back while the two nodes write, as a
//! real lag does.

use spock_tests::fixtures::{mutual_pair, next_commit_is_later, pause_pair, resume_pair, sync_mesh, sync_through};
use spock_tests::{Cluster, NodeOptions, TestNode};

fn pair() -> Cluster {
    let c = Cluster::start(
        ["n1", "n2"].into_iter().map(|n| NodeOptions::new(n).setting("spock.save_resolutions", "on")).collect(),
    )
    .unwrap();
    mutual_pair(c.node(0), c.node(1));
    c
}

/// Neither node applies the other's changes until [`together`].
fn apart(c: &Cluster) {
    pause_pair(c.node(0), c.node(1));
}

fn together(c: &Cluster) {
    resume_pair(c.node(0), c.node(1));
    sync_mesh(&[c.node(0), c.node(1)]);
}

fn rows(n: &TestNode) -> String {
    n.query_text("SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM t").unwrap()
}

fn resolutions(n: &TestNode) -> String {
    n.query_text(
        "SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ',' ORDER BY id), '') \
         FROM spock.resolutions",
    )
    .unwrap()
}

/// The row both nodes start from, replicated to both.
fn start_with_a_row(c: &Cluster) {
    c.node(0).execute("INSERT INTO t VALUES (1, 'original'), (2, 'other')").unwrap();
    sync_mesh(&[c.node(0), c.node(1)]);
    assert_eq!(rows(c.node(1)), "1=original,2=other");
}

#[test]
fn an_update_newer_than_a_delete_brings_the_row_back_everywhere() {
    let c = pair();
    let (n1, n2) = (c.node(0), c.node(1));
    start_with_a_row(&c);
    apart(&c);
    n1.execute("DELETE FROM t WHERE id = 1").unwrap();
    next_commit_is_later(n1, n2);
    n2.execute("UPDATE t SET v = 'updated later' WHERE id = 1").unwrap();
    together(&c);

    assert_eq!(rows(n1), "1=updated later,2=other");
    assert_eq!(rows(n2), rows(n1));
    // n1 met the UPDATE with the row deleted: the newer UPDATE re-creates it. n2 met
    // the older DELETE with the row updated: it stays.
    assert_eq!(resolutions(n1), "update_deleted:apply_remote");
    assert_eq!(resolutions(n2), "delete_exists:keep_local");
    // The record carries the whole remote row and the deleted row.
    let record: String = n1
        .query_one(
            "SELECT remote_tuple || ' / ' || local_tuple FROM spock.resolutions WHERE conflict_type = 'update_deleted'",
        )
        .unwrap();
    assert!(record.contains("updated later") && record.contains("original"), "{record}");
}

#[test]
fn a_delete_newer_than_an_update_removes_the_row_everywhere() {
    let c = pair();
    let (n1, n2) = (c.node(0), c.node(1));
    start_with_a_row(&c);
    apart(&c);
    n2.execute("UPDATE t SET v = 'updated first' WHERE id = 1").unwrap();
    next_commit_is_later(n2, n1);
    n1.execute("DELETE FROM t WHERE id = 1").unwrap();
    together(&c);

    assert_eq!(rows(n1), "2=other");
    assert_eq!(rows(n2), rows(n1));
    assert_eq!(resolutions(n1), "update_deleted:keep_local");
    assert_eq!(resolutions(n2), "", "a later DELETE of another node's write is normal flow");
}

#[test]
fn an_insert_older_than_a_delete_of_its_key_stays_deleted() {
    let c = pair();
    let (n1, n2) = (c.node(0), c.node(1));
    start_with_a_row(&c);
    apart(&c);
    // n2 deletes row 1 and writes it again; n1 deletes row 1 later. The re-insert is
    // older than n1's DELETE, which n2 applies to the re-inserted row; n1 meets the
    // older INSERT with the key deleted and keeps it deleted.
    n2.execute("DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1, 'written again')").unwrap();
    next_commit_is_later(n2, n1);
    n1.execute("DELETE FROM t WHERE id = 1").unwrap();
    together(&c);

    assert_eq!(rows(n1), "2=other");
    assert_eq!(rows(n2), rows(n1));
    assert!(resolutions(n1).contains("insert_deleted:keep_local"), "{}", resolutions(n1));
}

#[test]
fn an_update_of_a_row_that_never_arrived_is_applied_when_it_carries_the_whole_row() {
    let c = pair();
    let (n1, n2) = (c.node(0), c.node(1));
    // Rows written on n1 before the table joined a set never reach n2.
    for n in [n1, n2] {
        n.execute("CREATE TABLE u(id int PRIMARY KEY, v text, doc text); ALTER TABLE u ALTER doc SET STORAGE EXTERNAL")
            .unwrap();
    }
    n1.execute(
        "INSERT INTO u VALUES (1, 'small', 'doc'), \
         (2, 'large', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i))",
    )
    .unwrap();
    for n in [n1, n2] {
        n.execute("SELECT spock.repset_add_table('default', 'u')").unwrap();
    }
    // Row 1's UPDATE carries every value: applied as an INSERT. Row 2's leaves doc
    // in n1's TOAST: it cannot be applied whole, and is skipped (and recorded).
    n1.execute("UPDATE u SET v = 'small, updated' WHERE id = 1; UPDATE u SET v = 'large, updated' WHERE id = 2")
        .unwrap();
    sync_mesh(&[n1, n2]);
    let row = |n: &TestNode| {
        n.query_text("SELECT coalesce(string_agg(id || '=' || v || ':' || md5(doc), ',' ORDER BY id), '') FROM u")
            .unwrap()
    };
    assert_eq!(row(n2), n1.query_text("SELECT id || '=' || v || ':' || md5(doc) FROM u WHERE id = 1").unwrap());
    assert_eq!(resolutions(n2), "update_missing:apply_remote,update_missing:skip");
    let recorded: String =
        n2.query_one("SELECT remote_tuple FROM spock.resolutions WHERE conflict_resolution = 'apply_remote'").unwrap();
    assert!(recorded.contains("small, updated") && recorded.contains("doc"), "the whole remote row: {recorded}");
}

/// A local DELETE in progress when an older INSERT of the same key arrives: the
/// INSERT waits for it and then loses to it (`insert_deleted`); it is not let in
/// once the DELETE commits.
#[test]
fn an_insert_that_meets_a_local_delete_in_progress_loses_to_it() {
    let c = pair();
    let (n1, n2) = (c.node(0), c.node(1));
    // n2 has row 7, n1 does not (n1 does not apply n2's changes yet).
    n1.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    n2.execute("INSERT INTO t VALUES (7, 'n2')").unwrap();
    let mut deleting = n2.connect().unwrap();
    deleting.batch_execute("BEGIN; DELETE FROM t WHERE id = 7").unwrap();
    // n1 inserts 7; n2's apply meets the row its local transaction is deleting.
    n1.execute("INSERT INTO t VALUES (7, 'n1')").unwrap();
    spock_tests::wait_for(
        "n2's apply worker waiting for the local DELETE",
        std::time::Duration::from_secs(60),
        || {
            n2.query_one::<i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('spock apply', 'spock apply writer') AND wait_event_type = 'Lock'",
            )
            .unwrap()
        },
        1,
    );
    next_commit_is_later(n1, n2);
    deleting.batch_execute("COMMIT").unwrap();
    sync_through(n1, n2);
    assert_eq!(rows(n2), "", "the DELETE committed after n1's INSERT: the row stays deleted on n2");
    assert_eq!(resolutions(n2), "insert_deleted:keep_local");
    n1.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), "", "n2's newer DELETE removes n1's row");
    assert_eq!(rows(n2), "");
}
