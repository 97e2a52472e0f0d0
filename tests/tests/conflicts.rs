//! Each conflict kind and each `spock.conflict_resolution` policy on two real nodes.
//! Conflicts are made deterministic by changing both nodes while their
//! subscriptions are disabled, then letting the changes cross.

use std::time::Duration;

use spock_tests::fixtures::{next_commit_is_later, pause_pair, resume_pair};
use spock_tests::{Cluster, TestNode};

fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, f: impl FnMut() -> T, want: T) {
    spock_tests::wait_for(what, Duration::from_secs(60), f, want)
}

/// Two nodes in a mesh with `policy`, table t(id, v), resolutions saved.
fn pair(policy: &str) -> Cluster {
    let cluster = Cluster::start_n(2).unwrap();
    for n in &cluster.nodes {
        n.execute(&format!("ALTER SYSTEM SET spock.conflict_resolution = '{policy}'")).unwrap();
        n.execute("ALTER SYSTEM SET spock.save_resolutions = on").unwrap();
        n.execute("SELECT pg_reload_conf()").unwrap();
        n.execute("CREATE EXTENSION spock").unwrap();
        n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
        n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
        n.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    }
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute(&format!("SELECT spock.sub_create('sub_n1_n2', '{}')", b.dsn("postgres"))).unwrap();
    b.execute(&format!("SELECT spock.sub_create('sub_n2_n1', '{}')", a.dsn("postgres"))).unwrap();
    for n in [a, b] {
        wait_for(
            "replicating",
            || n.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
            "replicating".into(),
        );
    }
    cluster
}

fn apart(c: &Cluster) {
    pause_pair(c.node(0), c.node(1));
}

fn together(c: &Cluster) {
    resume_pair(c.node(0), c.node(1));
}

fn value(n: &TestNode) -> String {
    n.query_one::<Option<String>>("SELECT (SELECT v FROM t WHERE id = 1)").unwrap().unwrap_or_else(|| "<none>".into())
}

/// The resolutions in the provider's commit order (parallel writers decide
/// independent transactions in any order, so `id` need not follow it).
fn resolutions(n: &TestNode) -> String {
    n.query_one::<String>(
        "SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ',' ORDER BY remote_timestamp, id), '')
           FROM spock.resolutions",
    )
    .unwrap()
}

/// Waits until each node's slots confirmed everything: both sides applied all.
fn settle(c: &Cluster) {
    for n in &c.nodes {
        n.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    }
}

/// Both nodes change row 1 while apart, n2 after n1.
fn concurrent_update(c: &Cluster) {
    c.node(0).execute("INSERT INTO t VALUES (1, 'original')").unwrap();
    wait_for("row on n2", || value(c.node(1)), "original".into());
    apart(c);
    c.node(0).execute("UPDATE t SET v = 'n1' WHERE id = 1").unwrap();
    next_commit_is_later(c.node(0), c.node(1));
    c.node(1).execute("UPDATE t SET v = 'n2' WHERE id = 1").unwrap();
    together(c);
    settle(c);
}

#[test]
fn last_update_wins_on_concurrent_insert() {
    let c = pair("last_update_wins");
    apart(&c);
    c.node(0).execute("INSERT INTO t VALUES (1, 'n1')").unwrap();
    next_commit_is_later(c.node(0), c.node(1));
    c.node(1).execute("INSERT INTO t VALUES (1, 'n2')").unwrap();
    together(&c);
    settle(&c);
    for n in &c.nodes {
        wait_for("n2's insert everywhere", || value(n), "n2".into());
    }
    assert_eq!(resolutions(c.node(0)), "insert_exists:apply_remote");
    // the remote transaction is identified by its xid and commit LSN on the provider
    let ids: String = c
        .node(0)
        .query_one("SELECT (remote_xid::text::int8 > 0 AND remote_lsn > '0/0')::text FROM spock.resolutions")
        .unwrap();
    assert_eq!(ids, "true");
    // both versions of the row, and the local one's transaction
    let rows: String = c
        .node(0)
        .query_one("SELECT local_tuple || ' ' || remote_tuple || ' ' || (local_xid::text::int8 > 0)::text FROM spock.resolutions")
        .unwrap();
    // (as row_to_json writes rows, as in Spock)
    assert_eq!(rows, r#"{"id":1,"v":"n1"} {"id":1,"v":"n2"} true"#);
    assert_eq!(resolutions(c.node(1)), "insert_exists:keep_local");
}

#[test]
fn first_update_wins_keeps_the_older_change() {
    let c = pair("first_update_wins");
    concurrent_update(&c);
    for n in &c.nodes {
        wait_for("n1's (older) update everywhere", || value(n), "n1".into());
    }
    assert_eq!(resolutions(c.node(0)), "update_origin_differs:keep_local");
    // (the later write by another node that applies is normal flow: not recorded)
    assert_eq!(resolutions(c.node(1)), "");
}

#[test]
fn apply_remote_and_keep_local_do_what_they_say() {
    let c = pair("apply_remote");
    concurrent_update(&c);
    // each node takes the other's value
    wait_for("n1 took n2's value", || value(c.node(0)), "n2".into());
    wait_for("n2 took n1's value", || value(c.node(1)), "n1".into());
    // (a remote change that applies over another node's write is normal flow)
    assert_eq!(resolutions(c.node(0)), "");

    let c = pair("keep_local");
    concurrent_update(&c);
    // concurrent_update settled: both sides applied everything
    assert_eq!(value(c.node(0)), "n1");
    assert_eq!(value(c.node(1)), "n2");
    assert_eq!(resolutions(c.node(1)), "update_origin_differs:keep_local");
}

#[test]
fn error_policy_stops_the_subscription_with_an_error() {
    let c = pair("error");
    c.node(0).execute("INSERT INTO t VALUES (1, 'original')").unwrap();
    wait_for("row on n2", || value(c.node(1)), "original".into());
    apart(&c);
    c.node(0).execute("UPDATE t SET v = 'n1' WHERE id = 1").unwrap();
    c.node(1).execute("UPDATE t SET v = 'n2' WHERE id = 1").unwrap();
    let log_from = c.node(1).log_offset();
    together(&c);
    // the change is not applied: the worker reports the conflict
    let error = "conflict update_origin_differs cannot be resolved under conflict_resolution = error";
    c.node(1).wait_for_log(log_from, error, 1, Duration::from_secs(60));
    assert_eq!(value(c.node(1)), "n2");
}

#[test]
fn delete_conflicts() {
    let c = pair("last_update_wins");
    let (a, b) = (c.node(0), c.node(1));
    a.execute("INSERT INTO t VALUES (1, 'original'), (2, 'both delete')").unwrap();
    wait_for("rows on n2", || b.query_one::<i64>("SELECT count(*) FROM t").unwrap(), 2);
    apart(&c);
    // row 1: n1 deletes, n2 updates later; row 2: both delete
    a.execute("DELETE FROM t WHERE id = 1").unwrap();
    next_commit_is_later(a, b);
    b.execute("UPDATE t SET v = 'updated after the delete' WHERE id = 1").unwrap();
    a.execute("DELETE FROM t WHERE id = 2").unwrap();
    b.execute("DELETE FROM t WHERE id = 2").unwrap();
    together(&c);
    settle(&c);
    // n1 meets the later UPDATE with row 1 deleted: the DELETE is a version, older,
    // so the row comes back (tests/tests/delete_races.rs has every race).
    wait_for("n1's resolutions", || resolutions(a), "update_deleted:apply_remote,delete_missing:skip".into());
    wait_for("n2's resolutions", || resolutions(b), "delete_exists:keep_local,delete_missing:skip".into());
    assert_eq!(value(b), "updated after the delete");
    assert_eq!(value(a), "updated after the delete");
}

/// `spock.check_all_uc_indexes` (Spock's test conflict_secondary_unique): an INSERT
/// whose key is new but whose value of another unique index is taken here conflicts
/// with that row and, being later, replaces it (key included); a partial index only
/// counts for rows in its predicate; NULLs meet only in a NULLS NOT DISTINCT index.
#[test]
fn check_all_uc_indexes_resolves_conflicts_on_other_unique_indexes() {
    let c = pair("last_update_wins");
    let (a, b) = (c.node(0), c.node(1));
    for n in [a, b] {
        n.execute("ALTER SYSTEM SET spock.check_all_uc_indexes = on").unwrap();
        n.execute("SELECT pg_reload_conf()").unwrap();
        n.execute(
            "CREATE TABLE u (a int PRIMARY KEY, b int NOT NULL UNIQUE, v text);
             CREATE TABLE pred (a int PRIMARY KEY, b int NOT NULL, check_unique boolean NOT NULL);
             CREATE UNIQUE INDEX ON pred (b) WHERE check_unique;
             CREATE TABLE nulls (a int PRIMARY KEY, b int UNIQUE);
             CREATE TABLE nnd (a int PRIMARY KEY, b int UNIQUE NULLS NOT DISTINCT);
             SELECT spock.repset_add_table('default', t) FROM unnest(ARRAY['u', 'pred', 'nulls', 'nnd']) t;",
        )
        .unwrap();
    }
    // Rows written on b alone, then later rows from a that meet them through b's
    // unique indexes.
    apart(&c);
    b.execute(
        "INSERT INTO u VALUES (100, 1, 'local');
         INSERT INTO pred VALUES (3, 2, true);
         INSERT INTO nulls VALUES (10, NULL);
         INSERT INTO nnd VALUES (100, NULL);",
    )
    .unwrap();
    next_commit_is_later(b, a);
    a.execute(
        "INSERT INTO u VALUES (200, 1, 'remote');
         INSERT INTO pred VALUES (4, 2, false);
         INSERT INTO nulls VALUES (20, NULL);
         INSERT INTO nnd VALUES (200, NULL);",
    )
    .unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_for("b applied a's rows", || b.query_one::<i64>("SELECT count(*) FROM nnd WHERE a = 200").unwrap(), 1);
    let rows = |sql: &str| {
        b.query_one::<String>(&format!("SELECT string_agg(x::text, ' ' ORDER BY x::text) FROM ({sql}) x")).unwrap()
    };
    assert_eq!(rows("SELECT * FROM u"), "(200,1,remote)", "the later row replaced the local one");
    assert_eq!(rows("SELECT * FROM pred"), "(3,2,t) (4,2,f)", "outside the predicate: no conflict");
    assert_eq!(rows("SELECT * FROM nulls"), "(10,) (20,)", "NULLs are distinct");
    assert_eq!(rows("SELECT * FROM nnd"), "(200,)", "NULLS NOT DISTINCT: the NULLs met");
    assert_eq!(
        b.query_one::<String>("SELECT string_agg(regexp_replace(relname, '^.*[.]', '') || ':' || conflict_type || ':' || conflict_resolution, ',' ORDER BY id) FROM spock.resolutions").unwrap(),
        "u:insert_exists:apply_remote,nnd:insert_exists:apply_remote"
    );
    // The subscription never stopped on a duplicate key.
    assert_eq!(b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(), "replicating");
}

/// `spock.get_subscription_stats` counts each conflict kind per subscription until
/// `spock.reset_subscription_stats`; `spock.cleanup_resolutions` trims old rows of
/// `spock.resolutions` by `spock.resolutions_retention_days` or its argument.
#[test]
fn conflict_statistics_and_resolutions_cleanup() {
    let c = pair("last_update_wins");
    let (a, b) = (c.node(0), c.node(1));
    let sub: i64 = b.query_one("SELECT sub_id::int8 FROM spock.subscription").unwrap();
    let stats = || {
        b.query_one::<String>(&format!(
            "SELECT concat_ws(',', confl_insert_exists, confl_update_origin_differs, confl_update_exists,
                              confl_update_missing, confl_delete_origin_differs, confl_delete_missing,
                              confl_delete_exists)
               FROM spock.get_subscription_stats({sub})"
        ))
        .unwrap()
    };
    b.execute(&format!("SELECT spock.reset_subscription_stats({sub})")).unwrap();
    assert_eq!(stats(), "0,0,0,0,0,0,0");
    assert!(b
        .query_one::<bool>(&format!(
            "SELECT stats_reset > now() - interval '1 hour' FROM spock.get_subscription_stats({sub})"
        ))
        .unwrap());
    a.execute("INSERT INTO t VALUES (1, 'a'), (2, 'a'), (3, 'a')").unwrap();
    settle(&c);
    // update_missing, delete_missing, insert_exists on b.
    apart(&c);
    b.execute("DELETE FROM t WHERE id IN (1, 2); INSERT INTO t VALUES (4, 'b')").unwrap();
    next_commit_is_later(b, a);
    a.execute("UPDATE t SET v = 'a2' WHERE id = 1; DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (4, 'a')").unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_for("b applied a's changes", || b.query_one::<String>("SELECT v FROM t WHERE id = 4").unwrap(), "a".into());
    assert_eq!(stats(), "1,0,0,1,0,1,0");
    // Reset: back to zero; a plain role reads them but may not reset them.
    b.execute("CREATE ROLE plain LOGIN").unwrap();
    let mut p = b.connect_as("postgres", "plain").unwrap();
    assert_eq!(
        p.query_one(&format!("SELECT confl_insert_exists FROM spock.get_subscription_stats({sub})"), &[])
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    let e = p.batch_execute(&format!("SELECT spock.reset_subscription_stats({sub})")).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    b.execute("SELECT spock.reset_subscription_stats()").unwrap();
    assert_eq!(stats(), "0,0,0,0,0,0,0");

    // An UPDATE that a unique index here refuses counts as update_exists (as in
    // Spock), and goes to exception handling.
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE public.w (id int PRIMARY KEY, u int)')").unwrap();
    a.execute("SELECT spock.repset_add_table('default', 'w')").unwrap();
    a.execute("INSERT INTO w VALUES (2, 200)").unwrap();
    wait_for("w on b", || b.query_one::<i64>("SELECT count(*) FROM w").unwrap(), 1);
    b.execute("INSERT INTO w VALUES (3, 300); CREATE UNIQUE INDEX w_u ON w (u)").unwrap();
    a.execute("UPDATE w SET u = 300 WHERE id = 2").unwrap();
    wait_for(
        "the failed UPDATE logged",
        || b.query_one::<i64>("SELECT count(*) FROM spock.exception_log WHERE table_name = 'w'").unwrap(),
        1,
    );
    assert_eq!(stats(), "0,0,1,0,0,0,0");
    b.execute("SELECT spock.reset_subscription_stats()").unwrap();

    // cleanup_resolutions: rows older than the retention go.
    let saved = b.query_one::<i64>("SELECT count(*) FROM spock.resolutions").unwrap();
    assert!(saved >= 3, "{saved} resolutions saved");
    b.execute("UPDATE spock.resolutions SET log_time = now() - interval '60 days' WHERE id = (SELECT min(id) FROM spock.resolutions)").unwrap();
    assert_eq!(b.query_one::<i64>("SELECT spock.cleanup_resolutions(90)").unwrap(), 0);
    b.execute("ALTER SYSTEM SET spock.resolutions_retention_days = 0").unwrap();
    b.execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "the setting",
        || b.query_one::<String>("SELECT current_setting('spock.resolutions_retention_days')").unwrap(),
        "0".into(),
    );
    assert_eq!(b.query_one::<i64>("SELECT spock.cleanup_resolutions()").unwrap(), 0, "0 days: no cleanup");
    assert_eq!(b.query_one::<i64>("SELECT spock.cleanup_resolutions(30)").unwrap(), 1);
    assert_eq!(b.query_one::<i64>("SELECT count(*) FROM spock.resolutions").unwrap(), saved - 1);
}
