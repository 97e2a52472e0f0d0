//! `spock.exception_behaviour` on real nodes: a remote transaction with a row that
//! violates a constraint only the subscriber has. Each mode must apply, log or stop
//! exactly as documented, and replication must go on afterwards (or stay stopped
//! with a message that says how to continue).

use std::time::Duration;

use spock_tests::fixtures::apply_workers;
use spock_tests::{Cluster, TestNode};

fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, f: impl FnMut() -> T, want: T) {
    spock_tests::wait_for(what, Duration::from_secs(60), f, want)
}

/// n1 publishes t1, t2, t3; n2 subscribes with `behaviour`. n2's t2 refuses 'bad'.
fn setup(behaviour: &str) -> Cluster {
    let c = Cluster::start_n(2).unwrap();
    for n in &c.nodes {
        n.execute("CREATE EXTENSION spock").unwrap();
        n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
        for t in ["t1", "t2", "t3"] {
            n.execute(&format!("CREATE TABLE {t}(x int PRIMARY KEY, v text)")).unwrap();
        }
    }
    let (p, s) = (c.node(0), c.node(1));
    for t in ["t1", "t2", "t3"] {
        p.execute(&format!("SELECT spock.repset_add_table('default', '{t}')")).unwrap();
    }
    s.execute("ALTER TABLE t2 ADD CONSTRAINT no_bad CHECK (v <> 'bad')").unwrap();
    s.execute(&format!("ALTER SYSTEM SET spock.exception_behaviour = '{behaviour}'")).unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}')", p.dsn("postgres"))).unwrap();
    wait_for(
        "replicating",
        || s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".into(),
    );
    c
}

fn rows(n: &TestNode, t: &str) -> String {
    n.query_one::<String>(&format!("SELECT coalesce(string_agg(x || ':' || v, ',' ORDER BY x), '') FROM {t}")).unwrap()
}

/// exception_log as `table/operation/failed` in command order; `failed` when the
/// message names the check constraint.
fn exception_log(n: &TestNode) -> String {
    spock_tests::fixtures::exception_log(n, "%no_bad%", "failed")
}

/// The one row of `sql`: a text and a boolean.
fn text_and_flag(n: &TestNode, sql: &str) -> (String, bool) {
    let r = n.connect().unwrap().query_one(sql, &[]).unwrap();
    (r.get(0), r.get(1))
}

/// The transaction with the bad row, then a good one after it.
fn bad_then_good(p: &TestNode) {
    p.execute("BEGIN; INSERT INTO t1 VALUES (1, 'a'); INSERT INTO t2 VALUES (1, 'bad'); INSERT INTO t3 VALUES (1, 'c'); COMMIT")
        .unwrap();
    p.execute("INSERT INTO t1 VALUES (2, 'after')").unwrap();
}

#[test]
fn discard_skips_only_the_failing_change() {
    let c = setup("discard");
    let (p, s) = (c.node(0), c.node(1));
    bad_then_good(p);
    wait_for("the transaction after the failed one", || rows(s, "t1"), "1:a,2:after".into());
    assert_eq!(rows(s, "t2"), "", "the violating row must not be applied");
    assert_eq!(rows(s, "t3"), "1:c", "the other changes of the transaction apply");
    assert_eq!(exception_log(s), "t2/INSERT/failed");
    let (new_tup, xid_ok) = text_and_flag(
        s,
        "SELECT remote_new_tup::text, remote_xid > 0 AND remote_origin > 0 AND remote_commit_ts > now() - interval '1 hour'
           FROM spock.exception_log",
    );
    assert!(new_tup.contains("\"attname\": \"v\"") && new_tup.contains("\"value\": \"bad\""), "{new_tup}");
    assert!(new_tup.contains("\"atttype\": \"text\""), "{new_tup}");
    assert!(xid_ok, "remote xid, origin and commit time are recorded");
    // Replication goes on normally (binary transfer again) and nothing is repeated.
    p.execute("INSERT INTO t2 VALUES (2, 'good')").unwrap();
    wait_for("later rows", || rows(s, "t2"), "2:good".into());
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 1);
    assert!(
        s.query_one::<bool>("SELECT local_tup IS NULL AND local_origin IS NULL FROM spock.exception_log").unwrap(),
        "an INSERT that met no row records no local row"
    );

    // A failing UPDATE records the local row it met, with its origin and commit time.
    p.execute("INSERT INTO t2 VALUES (5, 'five')").unwrap();
    wait_for("row 5", || rows(s, "t2"), "2:good,5:five".into());
    p.execute("UPDATE t2 SET v = 'bad' WHERE x = 5").unwrap();
    p.execute("INSERT INTO t1 VALUES (6, 'marker')").unwrap();
    wait_for("the transaction after the failed UPDATE", || rows(s, "t1"), "1:a,2:after,6:marker".into());
    assert_eq!(rows(s, "t2"), "2:good,5:five", "the failing UPDATE is discarded");
    let (local_tup, known) = text_and_flag(
        s,
        "SELECT local_tup::text,
                local_origin = (SELECT roident FROM pg_replication_origin WHERE roname LIKE 'spk_%')
                AND local_commit_ts BETWEEN now() - interval '1 hour' AND remote_commit_ts
           FROM spock.exception_log WHERE operation = 'UPDATE'",
    );
    assert!(local_tup.contains("\"attname\": \"v\"") && local_tup.contains("\"value\": \"five\""), "{local_tup}");
    assert!(local_tup.contains("\"atttype\": \"int4\""), "{local_tup}");
    assert!(known, "the local row's origin (the subscription's) and its older commit time are recorded");
}

#[test]
fn transdiscard_skips_the_whole_transaction_and_logs_every_change() {
    let c = setup("transdiscard");
    let (p, s) = (c.node(0), c.node(1));
    bad_then_good(p);
    wait_for("the transaction after the failed one", || rows(s, "t1"), "2:after".into());
    assert_eq!(rows(s, "t2"), "");
    assert_eq!(rows(s, "t3"), "", "nothing of the failed transaction applies");
    assert_eq!(exception_log(s), "t1/INSERT/collateral,t2/INSERT/failed,t3/INSERT/collateral");
    // The origin moved past the transaction: a restart does not bring it back.
    s.restart().unwrap();
    p.execute("INSERT INTO t3 VALUES (9, 'z')").unwrap();
    wait_for("rows after a restart", || rows(s, "t3"), "9:z".into());
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 3);
}

#[test]
fn sub_disable_stops_until_skipped_or_fixed() {
    let c = setup("sub_disable");
    let (p, s) = (c.node(0), c.node(1));
    let offset = s.log_offset();
    bad_then_good(p);
    wait_for(
        "subscription disabled",
        || s.query_one::<bool>("SELECT sub_enabled FROM spock.subscription").unwrap(),
        false,
    );
    assert_eq!(exception_log(s), "t1/INSERT/collateral,t2/INSERT/failed,t3/INSERT/collateral,/SUB_DISABLE/collateral");
    assert_eq!(rows(s, "t1"), "", "nothing applies, not even later transactions");
    assert!(s.log_since(offset).contains("sub_alter_skiplsn"), "the server log says how to continue");
    // the worker is gone and is not started again
    wait_for("no apply worker", || apply_workers(s), 0);
    assert_eq!(s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(), "disabled");

    // Skip the failed transaction with the LSN from the log, then enable.
    let lsn: String = s
        .query_one("SELECT substring(error_message from 'skip_lsn = (\\S+)') FROM spock.exception_log WHERE operation = 'SUB_DISABLE'")
        .unwrap();
    s.execute(&format!("SELECT spock.sub_alter_skiplsn('sub1', '{lsn}')")).unwrap();
    s.execute("SELECT spock.sub_enable('sub1')").unwrap();
    wait_for("later transaction applied", || rows(s, "t1"), "2:after".into());
    assert_eq!(rows(s, "t3"), "", "the skipped transaction stays skipped");

    // A second failure, fixed by dropping the constraint: re-enabling applies it whole.
    s.execute("TRUNCATE spock.exception_log").unwrap();
    p.execute("BEGIN; INSERT INTO t1 VALUES (3, 'a'); INSERT INTO t2 VALUES (3, 'bad'); COMMIT").unwrap();
    wait_for("disabled again", || s.query_one::<bool>("SELECT sub_enabled FROM spock.subscription").unwrap(), false);
    s.execute("ALTER TABLE t2 DROP CONSTRAINT no_bad").unwrap();
    s.execute("SELECT spock.sub_enable('sub1')").unwrap();
    wait_for("fixed transaction applied", || rows(s, "t2"), "3:bad".into());
    assert_eq!(rows(s, "t1"), "2:after,3:a");
}

/// A failed transaction is replayed at once from the worker's memory (as Spock's
/// replay queue), without a restart: the same apply worker goes on.
#[test]
fn a_failed_transaction_is_replayed_without_a_restart() {
    let c = setup("transdiscard");
    let (p, s) = (c.node(0), c.node(1));
    let pid = || s.query_one::<i32>("SELECT pid FROM pg_stat_activity WHERE backend_type = 'spock apply'").unwrap();
    let before = pid();
    let offset = s.log_offset();
    bad_then_good(p);
    wait_for("the transaction after the failed one", || rows(s, "t1"), "2:after".into());
    assert_eq!(exception_log(s), "t1/INSERT/collateral,t2/INSERT/failed,t3/INSERT/collateral");
    // (writers of a parallel apply replay after a restart: docs/apply.md)
    if !spock_tests::parallel_apply() {
        assert_eq!(pid(), before, "the worker that failed replayed the transaction");
        assert!(s.log_since(offset).contains("replaying the failed transaction from memory"));
    }
    // Values that came in binary are logged as text.
    let new_tup: String =
        s.query_one("SELECT remote_new_tup::text FROM spock.exception_log WHERE table_name = 't2'").unwrap();
    assert!(new_tup.contains("\"value\": \"bad\"") && new_tup.contains("\"value\": 1,"), "{new_tup}");
}

/// A failed transaction larger than spock.exception_replay_queue_size is replayed
/// after a restart instead, with the same outcome.
#[test]
fn a_failed_transaction_over_the_replay_queue_size_is_replayed_after_a_restart() {
    let c = setup("transdiscard");
    let (p, s) = (c.node(0), c.node(1));
    s.execute("ALTER SYSTEM SET spock.exception_replay_queue_size = '1MB'").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    let pid = || s.query_one::<i32>("SELECT pid FROM pg_stat_activity WHERE backend_type = 'spock apply'").unwrap();
    let before = pid();
    let offset = s.log_offset();
    p.execute(
        "BEGIN; INSERT INTO t1 SELECT g, repeat('x', 500) FROM generate_series(1, 4000) g;
         INSERT INTO t2 VALUES (1, 'bad'); COMMIT; INSERT INTO t3 VALUES (1, 'after')",
    )
    .unwrap();
    wait_for("the transaction after the failed one", || rows(s, "t3"), "1:after".into());
    assert_eq!(rows(s, "t2"), "");
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM t1").unwrap(), 0, "nothing of it applied");
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 4001);
    assert_ne!(pid(), before, "replayed by the restarted worker");
    assert!(!s.log_since(offset).contains("replaying the failed transaction from memory"));
}

/// A transaction replayed after a restart (here a streamed one, applied from its
/// spill file or eagerly) gets its SUB_DISABLE row, with the skip_lsn, as soon as
/// the failure is caught, before the worker comes back (Spock's tests look for it
/// right away); the replay keeps one such row, after the changes'.
#[test]
fn sub_disable_row_is_written_at_the_failure() {
    let c = setup("sub_disable");
    let (p, s) = (c.node(0), c.node(1));
    p.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'").unwrap();
    p.execute("SELECT pg_reload_conf()").unwrap();
    // The worker does not come back to replay until the delay is lifted.
    s.execute("ALTER SYSTEM SET spock.restart_delay_on_exception = '1h'").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    p.execute(
        "BEGIN; INSERT INTO t1 SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g;
         INSERT INTO t2 VALUES (1, 'bad'); COMMIT",
    )
    .unwrap();
    wait_for(
        "SUB_DISABLE row",
        || s.query_one::<i64>("SELECT count(*) FROM spock.exception_log WHERE operation = 'SUB_DISABLE'").unwrap(),
        1,
    );
    assert_eq!(exception_log(s), "/SUB_DISABLE/collateral", "only the SUB_DISABLE row before the replay");
    let msg: String = s.query_one("SELECT error_message FROM spock.exception_log").unwrap();
    assert!(msg.starts_with("disabling subscription sub1 due to exception(s) - skip_lsn = "), "{msg}");
    assert_eq!(rows(s, "t2"), "", "nothing of the failed transaction applied");
    // The replay logs the changes and disables, keeping one SUB_DISABLE row, last.
    s.execute("ALTER SYSTEM RESET spock.restart_delay_on_exception").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "subscription disabled",
        || s.query_one::<bool>("SELECT sub_enabled FROM spock.subscription").unwrap(),
        false,
    );
    assert_eq!(
        s.query_one::<String>(
            "SELECT string_agg(operation, ',' ORDER BY command_counter) FROM spock.exception_log
              WHERE command_counter > 3000"
        )
        .unwrap(),
        "INSERT,SUB_DISABLE"
    );
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 3002);
    assert_eq!(
        s.query_one::<String>("SELECT error_message FROM spock.exception_log WHERE operation = 'SUB_DISABLE'").unwrap(),
        msg
    );
}

/// A transient error (here a lock timeout while a local transaction holds the row)
/// is retried, never treated as an exception: the change arrives once the lock is
/// released and nothing is logged.
#[test]
fn transient_errors_are_retried_not_discarded() {
    let c = setup("transdiscard");
    let (p, s) = (c.node(0), c.node(1));
    s.execute("ALTER SYSTEM SET lock_timeout = '200ms'").unwrap();
    s.execute("ALTER SYSTEM SET spock.restart_delay_default = 200").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    p.execute("INSERT INTO t1 VALUES (1, 'first')").unwrap();
    wait_for("row", || rows(s, "t1"), "1:first".into());
    let mut holder = s.connect().unwrap();
    holder.batch_execute("BEGIN; SELECT * FROM t1 WHERE x = 1 FOR UPDATE;").unwrap();
    let log_from = s.log_offset();
    p.execute("UPDATE t1 SET v = 'second' WHERE x = 1").unwrap();
    // retried: the same transient error more than once, and nothing logged as an exception
    s.wait_for_log(log_from, "transient error (55P03)", 2, Duration::from_secs(60));
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 0);
    holder.batch_execute("COMMIT").unwrap();
    wait_for("the update after the lock is released", || rows(s, "t1"), "1:second".into());
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM spock.exception_log").unwrap(), 0);
}

/// A subscriber whose tables differ from the provider's (a column of another type,
/// a missing column) gets clean errors: each names the problem with a proper
/// SQLSTATE (never XX000 or a Rust panic), the worker survives it as an apply error,
/// and later changes replicate.
#[test]
fn schema_mismatches_give_clean_errors() {
    let c = setup("discard");
    let (p, s) = (c.node(0), c.node(1));
    s.execute("ALTER SYSTEM SET log_error_verbosity = verbose").unwrap();
    spock_tests::fixtures::reload(s);
    s.execute("ALTER TABLE t3 ALTER COLUMN v TYPE int USING NULL").unwrap();
    s.execute("ALTER TABLE t1 DROP COLUMN v").unwrap();
    let log_from = s.log_offset();
    p.execute("INSERT INTO t3 VALUES (1, 'not a number')").unwrap();
    p.execute("INSERT INTO t1 VALUES (1, 'no such column here')").unwrap();
    // A table that does not exist here: its values are logged with the provider's
    // (built-in) types.
    p.execute("CREATE TABLE t4 (x int PRIMARY KEY, v text); SELECT spock.repset_add_table('default', 't4')").unwrap();
    p.execute("INSERT INTO t4 VALUES (7, 'gone')").unwrap();
    p.execute("INSERT INTO t2 VALUES (1, 'after')").unwrap();
    wait_for("the change after the mismatches", || rows(s, "t2"), "1:after".into());
    let logged: String = s
        .query_one("SELECT string_agg(table_name || ': ' || error_message, ' | ' ORDER BY table_name) FROM spock.exception_log")
        .unwrap();
    assert!(logged.starts_with("t1: ") && logged.contains(" | t3: ") && logged.contains(" | t4: "), "{logged}");
    let t4: String =
        s.query_one("SELECT remote_new_tup::text FROM spock.exception_log WHERE table_name = 't4'").unwrap();
    assert_eq!(
        t4,
        r#"[{"value": 7, "attname": "x", "atttype": "int4"}, {"value": "gone", "attname": "v", "atttype": "text"}]"#
    );
    let log = s.log_since(log_from);
    for bad in ["XX000", "panicked", "terminated by signal", "PANIC"] {
        assert!(!log.contains(bad), "{bad} in the subscriber's log:\n{log}");
    }
    // Every ERROR in the log carries a SQLSTATE of a data or definition class.
    for line in log.lines().filter(|l| l.contains("ERROR:  ")) {
        let code = line.split("ERROR:  ").nth(1).unwrap_or_default().get(..5).unwrap_or_default();
        assert!(code.len() == 5 && code.chars().all(|ch| ch.is_ascii_alphanumeric()), "ERROR without SQLSTATE: {line}");
    }
    assert_eq!(count_rows(s, "t3"), 0);
}

fn count_rows(n: &TestNode, t: &str) -> i64 {
    n.query_one::<i64>(&format!("SELECT count(*) FROM {t}")).unwrap()
}
