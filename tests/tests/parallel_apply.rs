//! Parallel apply (`spock.parallel_apply_workers`, the subscription option
//! `parallel_apply_workers`): writers apply independent transactions side by side,
//! dependent ones in order, barriers alone, and every transaction commits in the
//! provider's commit order.

use std::time::Duration;

use spock_tests::fixtures::{count, replicating_pair, sync_through};
use spock_tests::{wait_for, TestNode};

/// Writers of `n` (backend type `spock apply writer`).
fn writers(n: &TestNode) -> i64 {
    count(n, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock apply writer'")
}

/// Sets the subscription of `b` to `a` to `n` writers and waits until they run.
/// The writers apply whatever this machine measures (`spock.parallel_apply_adaptive
/// = off`): these tests are about them.
fn use_writers(a: &TestNode, b: &TestNode, n: i64) {
    set_adaptive(b, false);
    b.execute(&format!(
        "SELECT spock.sub_alter_options('sub_{}_{}', '{{\"parallel_apply_workers\": {n}}}')",
        b.name, a.name
    ))
    .unwrap();
    wait_for("writers running", Duration::from_secs(60), || writers(b), if n > 1 { n } else { 0 });
}

/// Sets `spock.parallel_apply_adaptive` on `n` and waits until new processes
/// (workers started from now on) have it.
fn set_adaptive(n: &TestNode, on: bool) {
    let v = if on { "on" } else { "off" };
    n.execute(&format!("ALTER SYSTEM SET spock.parallel_apply_adaptive = {v}")).unwrap();
    n.execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "the setting to be in force",
        Duration::from_secs(60),
        || n.query_text("SHOW spock.parallel_apply_adaptive").unwrap(),
        v.to_string(),
    );
}

/// Creates `sql`'s table on both nodes and adds it to the default set on `a`.
fn table_on_both(a: &TestNode, b: &TestNode, name: &str, sql: &str) {
    a.execute(sql).unwrap();
    b.execute(sql).unwrap();
    a.execute(&format!("SELECT spock.repset_add_table('default', '{name}')")).unwrap();
}

fn md5(n: &TestNode, table: &str, order: &str) -> String {
    n.query_one::<String>(&format!(
        "SELECT coalesce(md5(string_agg(x::text, ',' ORDER BY {order})), '') FROM {table} x"
    ))
    .unwrap()
}

fn set_enabled(a: &TestNode, b: &TestNode, on: bool) {
    let f = if on { "sub_enable" } else { "sub_disable" };
    let extra = if on { "" } else { ", immediate := true" };
    b.execute(&format!("SELECT spock.{f}('sub_{}_{}'{extra})", b.name, a.name)).unwrap();
}

#[test]
fn dependent_transactions_apply_in_order_and_commits_keep_the_providers_order() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    table_on_both(a, b, "hot", "CREATE TABLE hot(id int PRIMARY KEY, v text NOT NULL DEFAULT '')");
    table_on_both(a, b, "log", "CREATE TABLE log(i int PRIMARY KEY, note text)");
    a.execute("INSERT INTO hot SELECT g FROM generate_series(0, 4) g").unwrap();
    sync_through(a, b);
    let offset = b.log_offset();
    use_writers(a, b, 4);
    b.wait_for_log(offset, "applying with 4 parallel writers", 1, Duration::from_secs(60));

    // A backlog: independent transactions (one log row each) and, every third,
    // one that appends to one of five hot rows (a chain per row, order visible).
    set_enabled(a, b, false);
    let mut c = a.connect().unwrap();
    for i in 1..=1500 {
        let mut t = c.transaction().unwrap();
        t.execute("INSERT INTO log VALUES ($1, $2)", &[&i, &format!("row {i}")]).unwrap();
        if i % 3 == 0 {
            t.execute("UPDATE hot SET v = v || ',' || $2 WHERE id = $1 % 5", &[&i, &i.to_string()]).unwrap();
        }
        t.commit().unwrap();
    }
    set_enabled(a, b, true);
    // Commits in the provider's order: every snapshot of the subscriber sees a
    // prefix of the log (ids 1..n, one transaction each), never a gap.
    let mut seen = 0;
    while seen < 1500 {
        let (n, max): (i64, i64) = {
            let mut cb = b.connect().unwrap();
            let row = cb.query_one("SELECT count(*), coalesce(max(i), 0)::int8 FROM log", &[]).unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(n, max, "the subscriber saw {n} log rows up to id {max}: a later commit before an earlier one");
        seen = n;
    }
    sync_through(a, b);
    assert_eq!(md5(b, "hot", "id"), md5(a, "hot", "id"), "the hot rows' chains");
    assert_eq!(md5(b, "log", "i"), md5(a, "log", "i"));
    assert_eq!(writers(b), 4);
    assert_eq!(
        b.query_one::<String>(
            "SELECT string_agg(role || coalesce(writer::text, ''), ',' ORDER BY role, writer) FROM spock.apply_workers"
        )
        .unwrap(),
        "leader,writer1,writer2,writer3,writer4",
        "spock.apply_workers"
    );
    assert!(!b.log_since(offset).contains("ERROR"), "{}", b.log_tail(40));
}

#[test]
fn barriers_truncate_ddl_keyless_tables_sequences_and_sync_events_keep_their_place() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    table_on_both(a, b, "kv", "CREATE TABLE kv(id int PRIMARY KEY, v int)");
    table_on_both(a, b, "trunc", "CREATE TABLE trunc(id int PRIMARY KEY, v int)");
    // A table without a key replicates inserts only, through a set of its own.
    a.execute("SELECT spock.repset_create('inserts', true, false, false, true)").unwrap();
    for n in [a, b] {
        n.execute("CREATE TABLE nokey(a int, b text)").unwrap();
    }
    a.execute("SELECT spock.repset_add_table('inserts', 'nokey')").unwrap();
    b.execute(&format!("SELECT spock.sub_add_repset('sub_{}_{}', 'inserts')", b.name, a.name)).unwrap();
    for n in [a, b] {
        n.execute("CREATE SEQUENCE s").unwrap();
    }
    a.execute("SELECT spock.repset_add_seq('default', 's')").unwrap();
    sync_through(a, b);
    use_writers(a, b, 4);

    set_enabled(a, b, false);
    let mut c = a.connect().unwrap();
    for round in 0..20 {
        for k in 0..20 {
            let id = round * 100 + k;
            c.execute(
                "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                &[&(id % 150), &id],
            )
            .unwrap();
            c.execute("INSERT INTO trunc VALUES ($1, $2)", &[&id, &round]).unwrap();
            c.execute("INSERT INTO nokey VALUES ($1, $2)", &[&id, &format!("r{round}")]).unwrap();
        }
        match round % 4 {
            // TRUNCATE: the rows before it go, those after stay.
            0 => {
                c.execute("TRUNCATE trunc", &[]).unwrap();
            }
            // Queued DDL: a column added, then written by the next transactions.
            1 => {
                c.execute(&format!("SELECT spock.replicate_ddl('ALTER TABLE public.kv ADD COLUMN c{round} int')"), &[])
                    .unwrap();
                c.execute(&format!("UPDATE kv SET c{round} = v WHERE id % 7 = 0"), &[]).unwrap();
            }
            // A sequence's value.
            2 => {
                c.execute("SELECT nextval('s') FROM generate_series(1, 50)", &[]).unwrap();
                c.execute("SELECT spock.sync_seq('s')", &[]).unwrap();
            }
            // A sync event in the middle of the stream.
            _ => {
                c.execute("SELECT spock.sync_event()", &[]).unwrap();
            }
        }
    }
    set_enabled(a, b, true);
    sync_through(a, b);
    for (t, order) in [("kv", "id"), ("trunc", "id"), ("nokey", "a, b")] {
        assert_eq!(md5(b, t, order), md5(a, t, order), "table {t}");
    }
    assert_eq!(count(b, "SELECT count(*) FROM nokey"), 400, "every keyless row exactly once");
    let seq_a = count(a, "SELECT last_value FROM s");
    wait_for("the sequence", Duration::from_secs(60), || count(b, "SELECT last_value FROM s") >= seq_a, true);
    assert_eq!(writers(b), 4);
}

#[test]
fn a_transaction_that_needs_an_earlier_one_first_is_applied_again_serially() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    // `k` is unique but not the key: the leader does not see that the INSERT of
    // (2, 7) needs the DELETE of (1, 7) first.
    table_on_both(a, b, "u", "CREATE TABLE u(id int PRIMARY KEY, k int UNIQUE)");
    table_on_both(a, b, "big", "CREATE TABLE big(id int PRIMARY KEY, v int)");
    a.execute("INSERT INTO u VALUES (1, 7)").unwrap();
    a.execute("INSERT INTO big SELECT g, 0 FROM generate_series(1, 100) g").unwrap();
    sync_through(a, b);
    use_writers(a, b, 4);

    // A local transaction holds a row the first transaction updates: its writer
    // waits, and the second transaction, on another writer, meets (1, 7).
    let mut local = b.connect().unwrap();
    let mut lock = local.transaction().unwrap();
    lock.execute("SELECT * FROM big WHERE id = 50 FOR UPDATE", &[]).unwrap();
    let offset = b.log_offset();
    a.execute("BEGIN; UPDATE big SET v = v + 1; DELETE FROM u WHERE id = 1; COMMIT").unwrap();
    a.execute("INSERT INTO u VALUES (2, 7)").unwrap();
    b.wait_for_log(offset, "are applied again, serially", 1, Duration::from_secs(60));
    lock.rollback().unwrap();
    sync_through(a, b);
    assert_eq!(md5(b, "u", "id"), md5(a, "u", "id"));
    assert_eq!(md5(b, "big", "id"), md5(a, "big", "id"));
    assert_eq!(count(b, "SELECT count(*) FROM spock.exception_log"), 0, "nothing was an exception");
    // Parallel again once past them.
    wait_for("writers running", Duration::from_secs(60), || writers(b), 4);
}

#[test]
fn the_option_takes_a_whole_number_from_1_to_16_or_null() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let sub = format!("sub_{}_{}", b.name, a.name);
    for bad in ["0", "17", "\"4\"", "2.5", "-1", "[4]"] {
        let err = b
            .execute(&format!("SELECT spock.sub_alter_options('{sub}', '{{\"parallel_apply_workers\": {bad}}}')"))
            .unwrap_err()
            .0;
        assert!(err.contains("22023") && err.contains("parallel_apply_workers"), "{bad}: {err}");
    }
    let stored = || b.query_one::<Option<i32>>("SELECT sub_parallel_apply_workers FROM spock.subscription").unwrap();
    assert_eq!(stored(), None, "nothing stored: the node's setting");
    use_writers(a, b, 3);
    assert_eq!(stored(), Some(3));
    a.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g").unwrap();
    sync_through(a, b);
    assert_eq!(count(b, "SELECT count(*) FROM t"), 50);
    // null: back to spock.parallel_apply_workers (the test's default, or the
    // suite's SPOCK_TEST_PARALLEL_APPLY)
    b.execute(&format!("SELECT spock.sub_alter_options('{sub}', '{{\"parallel_apply_workers\": null}}')")).unwrap();
    assert_eq!(stored(), None);
    let node_setting: i64 = count(b, "SELECT current_setting('spock.parallel_apply_workers')::int8");
    wait_for(
        "writers of the node's setting",
        Duration::from_secs(60),
        || writers(b),
        if node_setting > 1 { node_setting } else { 0 },
    );
    a.execute("INSERT INTO t SELECT g, 'y' FROM generate_series(51, 60) g").unwrap();
    sync_through(a, b);
    assert_eq!(count(b, "SELECT count(*) FROM t"), 60);
}

/// Rows `from..to`, one transaction each: a row of the keyless `log` (applied twice
/// it would show as a duplicate) and of `t`. Returns where it stopped.
fn write_rows(node: &TestNode, from: i32, to: i32) -> i32 {
    let Ok(mut c) = node.connect() else { return from };
    for id in from..to {
        let r = c.batch_execute(&format!("INSERT INTO log VALUES ({id}, 'x'); INSERT INTO t VALUES ({id}, 'x')"));
        if r.is_err() {
            return id;
        }
    }
    to
}

#[test]
fn kill_9_of_subscriber_and_provider_with_four_writers_loses_nothing_and_applies_nothing_twice() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    for n in [a, b] {
        n.execute("CREATE TABLE log(id int, v text)").unwrap();
    }
    a.execute("SELECT spock.repset_add_table('default_insert_only', 'log')").unwrap();
    use_writers(a, b, 4);
    // A backlog, applied by four writers while the subscriber is killed.
    set_enabled(a, b, false);
    assert_eq!(write_rows(a, 0, 12_000), 12_000);
    set_enabled(a, b, true);
    for round in 0..3 {
        let before = count(b, "SELECT count(*) FROM log");
        let target = (before + 1500).min(12_000);
        wait_for(
            "rows applied before the kill",
            Duration::from_secs(120),
            || count(b, "SELECT count(*) FROM log") >= target,
            true,
        );
        wait_for("four writers applying", Duration::from_secs(60), || writers(b), 4);
        b.kill9().unwrap();
        b.restart().unwrap();
        eprintln!("round {round}: subscriber killed after {target}+ rows");
    }
    // The provider killed while it streams new rows.
    let mut next = 12_000;
    for _ in 0..2 {
        let stop = std::thread::scope(|s| {
            let w = s.spawn(|| write_rows(a, next, next + 5000));
            let written = |a: &TestNode| count(a, &format!("SELECT count(*) FROM log WHERE id >= {next}"));
            wait_for("rows written before the kill", Duration::from_secs(120), || written(a) >= 1500, true);
            a.kill9().unwrap();
            w.join().unwrap()
        });
        a.restart().unwrap();
        next = (stop + 1).max(count(a, "SELECT coalesce(max(id), 0)::int8 FROM log") as i32 + 1);
    }
    write_rows(a, next, next + 100);
    let n = count(a, "SELECT count(*) FROM log");
    for table in ["log", "t"] {
        wait_for(
            &format!("{table} caught up"),
            Duration::from_secs(180),
            || count(b, &format!("SELECT count(*) FROM {table}")),
            n,
        );
    }
    sync_through(a, b);
    assert_eq!(count(b, "SELECT count(*) FROM log"), n, "rows applied twice");
    assert_eq!(count(b, "SELECT count(DISTINCT id) FROM log"), n);
    assert_eq!(md5(b, "log", "id"), md5(a, "log", "id"));
    assert_eq!(md5(b, "t", "id"), md5(a, "t", "id"));
}

/// Both nodes of a mutual pair change the same keys while apart, `n1` first and
/// `n2` after (so `n2`'s commits are the later ones in every conflict), then the
/// changes cross, applied with `n` writers on each side. Returns the rows of both
/// nodes and each node's resolutions by kind.
fn crossing_workload(n: i64) -> [String; 4] {
    let cluster = spock_tests::Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    for node in [a, b] {
        node.execute("ALTER SYSTEM SET spock.save_resolutions = on").unwrap();
        node.reload_conf().unwrap();
    }
    spock_tests::fixtures::mutual_pair(a, b);
    a.execute("INSERT INTO t SELECT g, 'start' FROM generate_series(1, 200) g").unwrap();
    spock_tests::fixtures::sync_mesh(&[a, b]);
    use_writers(a, b, n);
    use_writers(b, a, n);
    spock_tests::fixtures::pause_pair(a, b);
    let changes = |node: &TestNode, step: i32, tag: &str| {
        let mut c = node.connect().unwrap();
        for i in 0..300 {
            let k = (i * step) % 200 + 1;
            let sql = match i % 10 {
                0 => format!("DELETE FROM t WHERE id = {k}"),
                1 => format!("INSERT INTO t VALUES ({}, '{tag}-{i}') ON CONFLICT (id) DO UPDATE SET v = excluded.v", 1000 + i),
                2 => format!("BEGIN; UPDATE t SET v = '{tag}-{i}' WHERE id = {k}; UPDATE t SET v = v || '+' WHERE id = {}; COMMIT", (k + 50) % 200 + 1),
                _ => format!("UPDATE t SET v = '{tag}-{i}' WHERE id = {k}"),
            };
            c.batch_execute(&sql).unwrap();
        }
    };
    changes(a, 7, "n1");
    spock_tests::fixtures::next_commit_is_later(a, b);
    changes(b, 11, "n2");
    spock_tests::fixtures::resume_pair(a, b);
    spock_tests::fixtures::sync_mesh(&[a, b]);
    let by_kind = |node: &TestNode| {
        node.query_one::<String>(
            "SELECT coalesce(string_agg(k, ',' ORDER BY k), '') FROM
               (SELECT conflict_type || ':' || conflict_resolution || '=' || count(*) AS k
                  FROM spock.resolutions GROUP BY conflict_type, conflict_resolution) x",
        )
        .unwrap()
    };
    [md5(a, "t", "id"), md5(b, "t", "id"), by_kind(a), by_kind(b)]
}

#[test]
fn a_conflicting_two_node_workload_ends_as_with_serial_apply() {
    let serial = crossing_workload(1);
    assert_eq!(serial[0], serial[1], "both nodes hold the same rows");
    assert!(!serial[2].is_empty() && !serial[3].is_empty(), "conflicts were resolved: {serial:?}");
    let parallel = crossing_workload(4);
    assert_eq!(parallel, serial, "four writers: the same rows and the same resolutions as one");
}

#[test]
fn the_leader_measures_writers_against_itself_and_keeps_the_faster() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    table_on_both(a, b, "small", "CREATE TABLE small(id int PRIMARY KEY, v text)");
    b.execute("ALTER SYSTEM SET spock.parallel_apply_window = 200").unwrap();
    set_adaptive(b, true);
    let offset = b.log_offset();
    b.execute("SELECT spock.sub_alter_options('sub_n2_n1', '{\"parallel_apply_workers\": 4}')").unwrap();
    b.wait_for_log(offset, "applying with 4 parallel writers", 1, Duration::from_secs(60));
    // A backlog of small transactions, long enough for a window of each mode.
    set_enabled(a, b, false);
    a.execute(
        "CREATE PROCEDURE fill(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR i IN 1..n LOOP INSERT INTO small VALUES (i, repeat('x', 100)); COMMIT; END LOOP; END $$",
    )
    .unwrap();
    a.execute("CALL fill(60000)").unwrap();
    set_enabled(a, b, true);
    // Both measured, one kept: said in the log with the two rates.
    b.wait_for_log(offset, ", the leader alone ", 1, Duration::from_secs(120));
    sync_through(a, b);
    let log = b.log_since(offset);
    let decided = log
        .lines()
        .find(|l| l.contains("parallel apply: ") && !l.contains("not measured"))
        .unwrap_or_else(|| panic!("no decision with both rates in:\n{log}"));
    eprintln!("{decided}");
    assert!(decided.contains(" tx/s, the leader alone ") && decided.contains(" tx/s)"), "{decided}");
    assert_eq!(count(b, "SELECT count(*) FROM small"), 60000);
    assert_eq!(md5(a, "small", "id"), md5(b, "small", "id"));
}

#[test]
fn a_table_first_seen_inside_a_transaction_the_leader_applies_itself() {
    // Above 8 MB the leader applies a transaction itself (as it does every one when
    // it chose to apply alone); the relation message of a table the transaction
    // reaches only then arrives inside it, and its unique indexes are looked up
    // there.
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    table_on_both(a, b, "bulk", "CREATE TABLE bulk(id int PRIMARY KEY, v text)");
    table_on_both(a, b, "late", "CREATE TABLE late(id int PRIMARY KEY, v text UNIQUE)");
    use_writers(a, b, 4);
    let offset = b.log_offset();
    a.execute(
        "BEGIN; INSERT INTO bulk SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g;
         INSERT INTO late VALUES (1, 'after'); COMMIT",
    )
    .unwrap();
    sync_through(a, b);
    assert_eq!(count(b, "SELECT count(*) FROM late"), 1);
    assert_eq!(count(b, "SELECT count(*) FROM bulk"), 60000);
    let log = b.log_since(offset);
    assert!(!log.contains("ERROR"), "{log}");
}
