//! Deleted row versions are kept until they cannot matter (spock_core::retention):
//! while a peer has not applied what it committed before a DELETE here, VACUUM
//! keeps the deleted version, so an older change of that peer still loses to the
//! DELETE when it arrives. The manager holds the removal horizon with its slot
//! `spock_retain_<database oid>`; `spock.deleted_version_retention` caps how long.

use std::time::Duration;

use spock_tests::fixtures::{
    count, full_mesh, mutual_pair, next_commit_is_later, pause_pair, reload, resume_pair, sync_mesh, sync_through,
};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

fn pair(retention: &str) -> Cluster {
    let c = Cluster::start(
        ["n1", "n2"]
            .into_iter()
            .map(|n| {
                NodeOptions::new(n)
                    .setting("spock.save_resolutions", "on")
                    .setting("spock.deleted_version_retention", retention)
            })
            .collect(),
    )
    .unwrap();
    mutual_pair(c.node(0), c.node(1));
    c
}

fn rows(n: &TestNode) -> String {
    n.query_text("SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM t").unwrap()
}

/// The xmin of `n`'s retention slot as a number ("" when there is no slot).
fn slot_xmin(n: &TestNode) -> String {
    n.query_text(
        "SELECT coalesce((SELECT xmin::text FROM pg_replication_slots WHERE slot_name LIKE 'spock_retain_%'), '')",
    )
    .unwrap()
}

/// Returns once n's manager has looked at its horizon after this call, and which
/// subscriptions it found holding it.
fn horizon_checked(n: &TestNode) -> String {
    let t: String = n.query_one("SELECT clock_timestamp()::text").unwrap();
    wait_for(
        "the manager to look at the horizon",
        Duration::from_secs(60),
        || {
            n.query_one::<bool>(&format!("SELECT coalesce(bool_or(checked_at > '{t}'), false) FROM spock.retention"))
                .unwrap()
        },
        true,
    );
    n.query_text("SELECT array_to_string(held_by, ',') FROM spock.retention").unwrap()
}

/// The dead row versions of table t that VACUUM could not remove yet.
fn kept_dead_versions(n: &TestNode) -> i64 {
    n.execute("VACUUM t").unwrap();
    n.query_one::<i64>("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 't'").unwrap()
}

/// n2 updates row 1 while both directions are held back; n1 deletes it later and
/// runs VACUUM before n2's update arrives.
fn older_update_meets_vacuumed_delete(c: &Cluster) {
    let (n1, n2) = (c.node(0), c.node(1));
    n1.execute("INSERT INTO t VALUES (1, 'original'), (2, 'other')").unwrap();
    sync_mesh(&[n1, n2]);
    older_update_meets_vacuumed_delete_of(c, 1);
}

/// The same for row `id`, which both nodes have.
fn older_update_meets_vacuumed_delete_of(c: &Cluster, id: i32) {
    let (n1, n2) = (c.node(0), c.node(1));
    pause_pair(n1, n2);
    n2.execute(&format!("UPDATE t SET v = 'updated first' WHERE id = {id}")).unwrap();
    next_commit_is_later(n2, n1);
    n1.execute(&format!("DELETE FROM t WHERE id = {id}")).unwrap();
    n1.execute("VACUUM t").unwrap();
}

#[test]
fn vacuum_keeps_a_deleted_version_a_lagging_peer_still_needs() {
    let c = pair("600");
    let (n1, n2) = (c.node(0), c.node(1));
    older_update_meets_vacuumed_delete(&c);
    // The manager has looked since the DELETE, and kept it for n1's subscription.
    assert_eq!(horizon_checked(n1), "sub_n1_n2");
    assert!(kept_dead_versions(n1) >= 1, "VACUUM removed the deleted version n2's update needs");
    resume_pair(n1, n2);
    sync_mesh(&[n1, n2]);

    // The DELETE is newer than the UPDATE: the row is gone on both nodes.
    assert_eq!(rows(n1), "2=other");
    assert_eq!(rows(n2), rows(n1));
    let r: String = n1
        .query_text("SELECT string_agg(conflict_type || ':' || conflict_resolution, ',') FROM spock.resolutions")
        .unwrap();
    assert_eq!(r, "update_deleted:keep_local");
}

#[test]
fn a_crash_keeps_the_deleted_versions_a_lagging_peer_needs() {
    // The slot's xmin is on disk from the start: a crash before any checkpoint
    // brings back a horizon that still protects the DELETE (not none at all).
    let c = pair("600");
    let (n1, n2) = (c.node(0), c.node(1));
    older_update_meets_vacuumed_delete(&c);
    assert_eq!(horizon_checked(n1), "sub_n1_n2");
    n1.stop_immediate().unwrap();
    n1.restart().unwrap();
    assert_eq!(horizon_checked(n1), "sub_n1_n2");
    assert!(kept_dead_versions(n1) >= 1, "after the crash VACUUM removed the deleted version n2's update needs");
    resume_pair(n1, n2);
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), "2=other");
    assert_eq!(rows(n2), rows(n1));
}

/// `removals_until` of n's horizon, as text, once its manager looked after now.
fn removals_until(n: &TestNode) -> String {
    horizon_checked(n);
    n.query_text("SELECT coalesce(removals_until::text, '') FROM spock.retention").unwrap()
}

#[test]
fn versions_are_kept_after_what_removed_rows_not_after_every_write() {
    // What a candidate horizon must wait for is bounded by the commit timestamps of
    // the removals before it (workers::removals): local DELETEs and UPDATEs of a
    // key, applied DELETEs and key changes count; inserts, updates of other
    // columns and spock's own catalog writes do not.
    let c = pair("600");
    let (n1, n2) = (c.node(0), c.node(1));
    // Whether n's manager, looking after now, bounds removals at `than` or later.
    let later = |n: &TestNode, than: &str| {
        let until = removals_until(n);
        !until.is_empty() && n.query_one::<bool>(&format!("SELECT '{than}'::timestamptz <= '{until}'")).unwrap()
    };
    let t0: String = n1.query_one("SELECT clock_timestamp()::text").unwrap();
    n1.execute("INSERT INTO t VALUES (5, 'x')").unwrap();
    n1.execute("SELECT spock.sub_disable('sub_n1_n2'); SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    assert!(!later(n1, &t0), "an INSERT and catalog writes removed nothing: {}", removals_until(n1));

    let t1: String = n1.query_one("SELECT clock_timestamp()::text").unwrap();
    n1.execute("UPDATE t SET v = 'w' WHERE id = 5").unwrap();
    n1.execute("INSERT INTO t VALUES (5, 'x2') ON CONFLICT (id) DO UPDATE SET v = excluded.v").unwrap();
    assert!(!later(n1, &t1), "updates of a non-key column removed no key: {}", removals_until(n1));
    n1.execute("UPDATE t SET id = 7 WHERE id = 5").unwrap();
    assert!(later(n1, &t1), "an UPDATE of the key counts from its commit: {}", removals_until(n1));
    let t1: String = n1.query_one("SELECT clock_timestamp()::text").unwrap();
    n1.execute("DELETE FROM t WHERE id = 7").unwrap();
    assert!(later(n1, &t1), "a local DELETE counts from its commit: {}", removals_until(n1));

    // What n2 applies counts when it removes a key, with n1's commit timestamp.
    n1.execute("INSERT INTO t VALUES (6, 'y')").unwrap();
    sync_mesh(&[n1, n2]);
    let t2: String = n1.query_one("SELECT clock_timestamp()::text").unwrap();
    n1.execute("UPDATE t SET v = 'z' WHERE id = 6").unwrap();
    sync_mesh(&[n1, n2]);
    assert!(!later(n2, &t2), "an applied UPDATE of a non-key column removed no key: {}", removals_until(n2));
    let xid: i64 = n1.query_one("WITH d AS (DELETE FROM t WHERE id = 6 RETURNING 1) SELECT txid_current()").unwrap();
    let committed: String =
        n1.query_text(&format!("SELECT pg_xact_commit_timestamp('{xid}'::text::xid)::text")).unwrap();
    sync_mesh(&[n1, n2]);
    assert!(later(n2, &t2), "an applied DELETE counts: {}", removals_until(n2));
    let until = removals_until(n2);
    assert!(
        n2.query_one::<bool>(&format!("SELECT '{until}'::timestamptz = '{committed}'")).unwrap(),
        "with its provider's commit timestamp {committed}: {until}"
    );
}

/// Whether n's manager, looking after now, keeps no versions (the horizon let go).
fn nothing_kept(n: &TestNode) -> bool {
    horizon_checked(n);
    n.query_one::<bool>("SELECT kept_since IS NULL FROM spock.retention").unwrap()
}

#[test]
fn where_nothing_removes_a_key_no_old_version_is_kept_and_the_next_delete_is() {
    let c = pair("600");
    let (n1, n2) = (c.node(0), c.node(1));
    n1.execute("INSERT INTO t VALUES (1, 'original'), (2, 'other')").unwrap();
    sync_mesh(&[n1, n2]);
    for n in [n1, n2] {
        wait_for("the horizon to be let go", Duration::from_secs(60), || nothing_kept(n), true);
    }
    // Hot rows updated on both nodes, none of it removing a key: every old version
    // is gone at the next VACUUM, on the node that wrote it and the one that
    // applied it (with the horizon held, the manager's last candidate, up to a
    // second old, would keep them).
    for i in 0..50 {
        n1.execute(&format!("UPDATE t SET v = 'n1 {i}' WHERE id = 1")).unwrap();
        n2.execute(&format!("UPDATE t SET v = 'n2 {i}' WHERE id = 2")).unwrap();
    }
    sync_mesh(&[n1, n2]);
    assert_eq!(kept_dead_versions(n1), 0, "n1 kept old versions of updated rows");
    assert_eq!(kept_dead_versions(n2), 0, "n2 kept old versions of updated rows");
    assert!(nothing_kept(n1) && nothing_kept(n2));

    // Let go, the horizon is held again by the first DELETE, before it commits:
    // the deleted version a lagging peer needs survives VACUUM as before.
    older_update_meets_vacuumed_delete_of(&c, 2);
    assert!(kept_dead_versions(n1) >= 1, "VACUUM removed the deleted version n2's update needs");
    assert!(!nothing_kept(n1), "the horizon is held while n2 owes an older change");
    resume_pair(n1, n2);
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), "1=n1 49");
    assert_eq!(rows(n2), rows(n1));
}

#[test]
fn without_retention_vacuum_lets_an_older_update_bring_a_deleted_row_back() {
    // The control: with nothing kept, VACUUM removes the deleted version and the
    // older UPDATE, finding no trace of the DELETE, re-creates the row on n1 only.
    let c = pair("0");
    let (n1, n2) = (c.node(0), c.node(1));
    assert_eq!(slot_xmin(n1), "", "no slot when nothing is kept");
    older_update_meets_vacuumed_delete(&c);
    assert_eq!(kept_dead_versions(n1), 0);
    resume_pair(n1, n2);
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), "1=updated first,2=other");
    assert_eq!(rows(n2), "2=other");
}

#[test]
fn the_horizon_follows_the_subscriptions_and_the_slot_goes_with_them() {
    let c = pair("600");
    let (n1, n2) = (c.node(0), c.node(1));
    // Both providers are idle: the probes alone move the horizon past a
    // transaction that ends now.
    let xid: i64 = n1.query_one("SELECT txid_current()").unwrap();
    wait_for(
        "n1's retention horizon to pass a finished transaction",
        Duration::from_secs(60),
        || slot_xmin(n1).parse::<i64>().is_ok_and(|x| x > xid),
        true,
    );
    // A subscription that does not apply holds it.
    n1.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    let held = slot_xmin(n1);
    n1.query_one::<i64>("SELECT txid_current()").unwrap();
    assert_eq!(horizon_checked(n1), "sub_n1_n2");
    assert_eq!(slot_xmin(n1), held);
    n1.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    let xid: i64 = n1.query_one("SELECT txid_current()").unwrap();
    wait_for(
        "n1's horizon to move again",
        Duration::from_secs(60),
        || slot_xmin(n1).parse::<i64>().is_ok_and(|x| x > xid),
        true,
    );
    // Off: the slot is dropped.
    n1.execute("ALTER SYSTEM SET spock.deleted_version_retention = 0").unwrap();
    reload(n1);
    wait_for("n1's retention slot to be dropped", Duration::from_secs(60), || slot_xmin(n1), String::new());
    // No subscription: no slot either.
    n2.execute("SELECT spock.sub_drop('sub_n2_n1')").unwrap();
    wait_for("n2's retention slot to be dropped", Duration::from_secs(60), || slot_xmin(n2), String::new());
}

#[test]
fn the_cap_lets_go_and_says_which_subscription_is_behind() {
    let c = pair("2");
    let (n1, n2) = (c.node(0), c.node(1));
    let offset = n1.log_offset();
    pause_pair(n1, n2);
    n1.wait_for_log(
        offset,
        "are no longer kept: subscription(s) sub_n1_n2 have not applied",
        1,
        Duration::from_secs(60),
    );
    resume_pair(n1, n2);
}

#[test]
fn a_delete_that_arrives_before_the_row_still_wins_over_its_older_insert() {
    let c = Cluster::start(
        ["n1", "n2", "n3"].into_iter().map(|n| NodeOptions::new(n).setting("spock.save_resolutions", "on")).collect(),
    )
    .unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    // n3 lags behind n1: n1's INSERT reaches n2, n2 deletes the row, and n2's
    // DELETE reaches n3 before the INSERT does.
    n3.execute("SELECT spock.sub_disable('sub_n3_n1', immediate := true)").unwrap();
    n1.execute("INSERT INTO t VALUES (1, 'from n1'), (2, 'stays')").unwrap();
    sync_through(n1, n2);
    next_commit_is_later(n1, n2);
    n2.execute("DELETE FROM t WHERE id = 1").unwrap();
    sync_through(n2, n3);
    // n3 met a DELETE of a row it does not have: it keeps the DELETE as a deleted
    // version, which VACUUM leaves while n3 has not applied n1's changes.
    n3.execute("VACUUM t").unwrap();
    n3.execute("SELECT spock.sub_enable('sub_n3_n1')").unwrap();
    sync_mesh(&[n1, n2, n3]);

    for n in [n1, n2, n3] {
        assert_eq!(rows(n), "2=stays", "node {}", n.name);
    }
    let r: String = n3
        .query_text(
            "SELECT string_agg(conflict_type || ':' || conflict_resolution, ',' ORDER BY id) FROM spock.resolutions",
        )
        .unwrap();
    assert_eq!(r, "delete_missing:skip,insert_deleted:keep_local");
    // The kept version was written under its own origin, never sent: n1 and n2
    // met only each other's changes.
    for n in [n1, n2] {
        assert_eq!(count(n, "SELECT count(*) FROM spock.resolutions WHERE conflict_type LIKE 'insert%'"), 0);
    }
    assert_eq!(count(n3, "SELECT count(*) FROM pg_replication_origin WHERE roname = 'spock_tombstone'"), 1);
}
