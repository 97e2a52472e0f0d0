//! Subscriptions between real nodes: rows reach the other node, both ways.

use std::time::{Duration, Instant};

use spock_tests::fixtures::{
    apply_workers, count, full_mesh, mutual_pair, next_commit_is_later, replicating_pair, setup_node, subscribe,
    subscribed_pair, sync_mesh, sync_through,
};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

#[test]
fn two_nodes_replicate_both_ways() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    mutual_pair(a, b);
    // one subscription each, replicating
    for n in [a, b] {
        assert_eq!(
            n.query_one::<String>("SELECT string_agg(status, ',') FROM spock.sub_show_status()").unwrap(),
            "replicating"
        );
    }
    a.execute("INSERT INTO t SELECT g, 'from n1' FROM generate_series(1, 100) g").unwrap();
    b.execute("INSERT INTO t SELECT g, 'from n2' FROM generate_series(101, 200) g").unwrap();
    for n in [a, b] {
        wait_for("200 rows on every node", Duration::from_secs(60), || count(n, "SELECT count(*) FROM t"), 200);
    }
    a.execute("UPDATE t SET v = 'changed on n1' WHERE id <= 10").unwrap();
    b.execute("DELETE FROM t WHERE id > 190").unwrap();
    for n in [a, b] {
        wait_for(
            "the update",
            Duration::from_secs(60),
            || count(n, "SELECT count(*) FROM t WHERE v = 'changed on n1'"),
            10,
        );
        wait_for("the delete", Duration::from_secs(60), || count(n, "SELECT count(*) FROM t"), 190);
    }
    // no loop: each row arrived once, nothing bounced back (a marker from each node
    // has passed through every stream after the rows)
    sync_mesh(&[a, b]);
    for n in [a, b] {
        assert_eq!(count(n, "SELECT count(*) FROM t"), 190);
    }
    let md5 =
        |n: &TestNode| n.query_one::<String>("SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t").unwrap();
    assert_eq!(md5(a), md5(b));
}

fn table_hash(n: &TestNode) -> String {
    n.query_one::<String>("SELECT coalesce(md5(string_agg(id || ':' || coalesce(v, '-'), ',' ORDER BY id)), '') FROM t")
        .unwrap()
}

#[test]
fn three_node_mesh_converges_under_concurrent_writes() {
    let cluster = Cluster::start_n(3).unwrap();
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    full_mesh(&nodes);
    // every node writes its own key range, concurrently, in many small transactions
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            s.spawn(move || {
                let mut c = n.connect().unwrap();
                for k in 0..200 {
                    let id = i as i32 * 1000 + k;
                    c.execute("INSERT INTO t VALUES ($1, $2)", &[&id, &format!("n{i}")]).unwrap();
                    if k % 3 == 0 {
                        c.execute("UPDATE t SET v = v || '+' WHERE id = $1", &[&id]).unwrap();
                    }
                    if k % 10 == 0 {
                        c.execute("DELETE FROM t WHERE id = $1", &[&id]).unwrap();
                    }
                }
            });
        }
    });
    for n in &nodes {
        wait_for("all rows everywhere", Duration::from_secs(120), || count(n, "SELECT count(*) FROM t"), 3 * 180);
    }
    let h = table_hash(nodes[0]);
    for n in &nodes[1..] {
        wait_for("identical tables", Duration::from_secs(60), || table_hash(n), h.clone());
    }
    // no loops: nothing arrives twice, and the provider of each row is the writer
    sync_mesh(&nodes);
    for n in &nodes {
        assert_eq!(count(n, "SELECT count(*) FROM t"), 540);
    }
}

#[test]
fn concurrent_updates_of_one_row_resolve_the_same_everywhere() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    full_mesh(&[a, b]);
    for n in [a, b] {
        n.execute("ALTER SYSTEM SET spock.save_resolutions = on").unwrap();
        n.execute("SELECT pg_reload_conf()").unwrap();
    }
    a.execute("INSERT INTO t VALUES (1, 'original')").unwrap();
    wait_for("the row on n2", Duration::from_secs(30), || count(b, "SELECT count(*) FROM t"), 1);
    // Take both nodes apart, change the row on both, the later change on n2.
    a.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    b.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    a.execute("UPDATE t SET v = 'n1 wrote first' WHERE id = 1").unwrap();
    next_commit_is_later(a, b);
    b.execute("UPDATE t SET v = 'n2 wrote last' WHERE id = 1").unwrap();
    a.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    for n in [a, b] {
        wait_for(
            "last update wins everywhere",
            Duration::from_secs(60),
            || n.query_one::<String>("SELECT v FROM t WHERE id = 1").unwrap(),
            "n2 wrote last".to_string(),
        );
    }
    // n2 recorded the change it kept out; n1 applied n2's later one, the normal
    // flow of replication, which is not recorded (as in Spock 6)
    wait_for(
        "resolution on n2",
        Duration::from_secs(30),
        || {
            b.query_one::<String>("SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ','), '') FROM spock.resolutions").unwrap()
        },
        "update_origin_differs:keep_local".to_string(),
    );
    assert_eq!(a.query_one::<i64>("SELECT count(*) FROM spock.resolutions").unwrap(), 0);
}

/// A provider writing rows one per transaction into an insert-only table without a
/// key (a row applied twice would show as a duplicate) and a keyed table.
fn crash_setup(cluster: &Cluster) {
    let (a, b) = (cluster.node(0), cluster.node(1));
    for n in [a, b] {
        setup_node(n);
        n.execute("CREATE TABLE log(id int, v text)").unwrap();
        n.execute("SELECT spock.repset_add_table('default_insert_only', 'log')").unwrap();
    }
    subscribe(b, a);
    wait_for(
        "subscription replicating",
        Duration::from_secs(60),
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".to_string(),
    );
}

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

fn assert_exactly_once(a: &TestNode, b: &TestNode) {
    let n = count(a, "SELECT count(*) FROM log");
    for table in ["log", "t"] {
        wait_for(
            &format!("{table} caught up"),
            Duration::from_secs(120),
            || count(b, &format!("SELECT count(*) FROM {table}")),
            n,
        );
    }
    sync_through(a, b);
    assert_eq!(count(b, "SELECT count(*) FROM log"), n, "rows applied twice");
    assert_eq!(count(b, "SELECT count(DISTINCT id) FROM log"), n);
    let h = |x: &TestNode| x.query_one::<String>("SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM log").unwrap();
    assert_eq!(h(a), h(b));
}

#[test]
fn killing_the_subscriber_loses_nothing_and_applies_nothing_twice() {
    let cluster = Cluster::start_n(2).unwrap();
    crash_setup(&cluster);
    let (a, b) = (cluster.node(0), cluster.node(1));
    std::thread::scope(|s| {
        let writer = s.spawn(|| write_rows(a, 0, 30_000));
        for round in 0..5 {
            // kill while rows are streaming in: once some more have been applied
            let before = count(b, "SELECT count(*) FROM log");
            let target = (before + 1000 + 300 * round).min(30_000);
            wait_for(
                "rows applied before the kill",
                Duration::from_secs(120),
                || count(b, "SELECT count(*) FROM log") >= target,
                true,
            );
            let applied = count(b, "SELECT count(*) FROM log");
            b.kill9().unwrap();
            b.restart().unwrap();
            eprintln!("round {round}: subscriber killed with {applied} rows applied");
        }
        assert_eq!(writer.join().unwrap(), 30_000);
    });
    assert_exactly_once(a, b);
}

#[test]
fn killing_the_provider_loses_nothing_and_applies_nothing_twice() {
    let cluster = Cluster::start_n(2).unwrap();
    crash_setup(&cluster);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut next = 0;
    for _ in 0..3 {
        let stop = std::thread::scope(|s| {
            let writer = s.spawn(|| write_rows(a, next, next + 5000));
            // kill once the writer is well into its rows
            let written = |a: &TestNode| count(a, &format!("SELECT count(*) FROM log WHERE id >= {next}"));
            wait_for("rows written before the kill", Duration::from_secs(120), || written(a) >= 1500, true);
            a.kill9().unwrap();
            writer.join().unwrap()
        });
        a.restart().unwrap();
        // the row being written when the server died may or may not have committed
        next = stop + 1;
        next = next.max(count(a, "SELECT coalesce(max(id), 0)::int8 FROM log") as i32 + 1);
    }
    write_rows(a, next, next + 100);
    assert_exactly_once(a, b);
}

#[test]
fn progress_views_sync_events_and_waiting() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    full_mesh(&[a, b]);
    a.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g").unwrap();
    // on the provider: wait until every spock slot confirmed the current position
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(count(b, "SELECT count(*) FROM t"), 1000, "confirmed means applied and flushed on the subscriber");
    // a sync event passes through the stream; the subscriber waits for it
    let lsn: String = a.query_one("SELECT spock.sync_event()::text").unwrap();
    let passed: bool =
        b.query_one(&format!("CALL spock.wait_for_sync_event(NULL, 'n1'::name, '{lsn}'::pg_lsn, 30)")).unwrap();
    assert!(passed);
    let progress: String = b
        .query_one(
            "SELECT row(n.node_name, p.remote_commit_lsn > '0/0', p.received_lsn >= p.remote_commit_lsn, p.remote_commit_ts IS NOT NULL)::text
               FROM spock.progress p JOIN spock.node n ON n.node_id = p.remote_node_id",
        )
        .unwrap();
    assert_eq!(progress, "(n1,t,t,t)");
    let lag: String = b
        .query_one("SELECT row(origin_name, receiver_name, replication_lag_bytes >= 0)::text FROM spock.lag_tracker")
        .unwrap();
    assert_eq!(lag, "(n1,n2,t)");
    // an unknown origin is a clear error
    let err = b.execute("CALL spock.wait_for_sync_event(NULL, 'nope'::name, '0/0'::pg_lsn, 1)").unwrap_err().0;
    assert!(err.contains("42704") && err.contains("Origin node 'nope' not found"), "{err}");
    let err = b.execute("CALL spock.wait_for_sync_event(NULL, NULL::oid, '0/0'::pg_lsn, 1)").unwrap_err().0;
    assert!(err.contains("22004") && err.contains("Invalid NULL origin_id"), "{err}");
}

#[test]
fn subscribing_to_a_wrong_dsn_or_unknown_set_fails_clearly() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    setup_node(b);
    let bad_dsn = format!("host={} port=1 dbname=postgres user=postgres", b.root().display());
    let err = b.execute(&format!("SELECT spock.sub_create('s1', '{bad_dsn}')")).unwrap_err().0;
    assert!(err.contains("08006") && err.contains("could not connect to the provider"), "{err}");
    let err = b
        .execute(&format!(
            "SELECT spock.sub_create('s1', '{}', replication_sets := '{{default,nosuchset}}')",
            a.dsn("postgres")
        ))
        .unwrap_err()
        .0;
    assert!(err.contains("42704") && err.contains("nosuchset"), "{err}");
    let err = b
        .execute(&format!("SELECT spock.sub_create('s1', '{}', apply_delay := '-1s')", a.dsn("postgres")))
        .unwrap_err()
        .0;
    assert!(err.contains("22023"), "{err}");
    let err = b.execute(&format!("SELECT spock.sub_create('s1', '{}')", b.dsn("postgres"))).unwrap_err().0;
    assert!(err.contains("cannot subscribe to itself"), "{err}");
    // the server is fine and nothing was left behind
    assert_eq!(count(b, "SELECT count(*) FROM spock.subscription"), 0);
    assert_eq!(count(a, "SELECT count(*) FROM pg_replication_slots"), 0);
    let err = b.execute("SELECT spock.sub_drop('nope')").unwrap_err().0;
    assert!(err.contains("42704"), "{err}");
}

#[test]
fn disable_enable_drop_and_skip_lsn() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    b.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    wait_for(
        "disabled",
        Duration::from_secs(30),
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "disabled".to_string(),
    );
    // a probe slot shows the commit LSN of the transaction the subscriber will skip
    a.execute("SELECT pg_create_logical_replication_slot('probe', 'spock_output')").unwrap();
    a.execute("INSERT INTO t VALUES (1, 'while disabled')").unwrap();
    a.execute("INSERT INTO t VALUES (2, 'skip me')").unwrap();
    a.execute("INSERT INTO t VALUES (3, 'after')").unwrap();
    let msgs = spock_tests::decoding::slot_messages(
        a,
        "postgres",
        "probe",
        &spock_tests::decoding::spock_params("default"),
        false,
    )
    .unwrap();
    let mut final_lsn = 0;
    let mut skip_lsn = None;
    for m in &msgs {
        match &m.message {
            spock_core::proto::Message::Begin(bg) => final_lsn = bg.final_lsn,
            spock_core::proto::Message::Insert(i)
                if i.new.columns[0]
                    == spock_core::proto::Datum::Internal(bytes::Bytes::from(2i32.to_ne_bytes().to_vec())) =>
            {
                skip_lsn = Some(final_lsn)
            }
            _ => {}
        }
    }
    let skip_lsn = skip_lsn.expect("the probe saw the insert of row 2");
    a.execute("SELECT pg_drop_replication_slot('probe')").unwrap();
    b.execute(&format!(
        "SELECT spock.sub_alter_skiplsn('sub_n2_n1', '{:X}/{:X}')",
        skip_lsn >> 32,
        skip_lsn & 0xffff_ffff
    ))
    .unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    wait_for(
        "caught up without the skipped row",
        Duration::from_secs(60),
        || b.query_one::<String>("SELECT string_agg(id::text, ',' ORDER BY id) FROM t").unwrap_or_default(),
        "1,3".to_string(),
    );
    assert_eq!(
        b.query_one::<String>("SELECT sub_skip_lsn::text FROM spock.subscription").unwrap(),
        "0/0",
        "the skip is done once"
    );
    // dropping the subscription drops the provider's slot and the local origin
    b.execute("SELECT spock.sub_drop('sub_n2_n1')").unwrap();
    wait_for("no apply worker", Duration::from_secs(30), || apply_workers(b), 0);
    assert_eq!(count(a, "SELECT count(*) FROM pg_replication_slots"), 0);
    assert_eq!(count(b, "SELECT count(*) FROM pg_replication_origin WHERE roname <> 'spock_tombstone'"), 0);
    assert_eq!(count(b, "SELECT count(*) FROM spock.subscription"), 0);
    // no worker, no slot: the insert has nowhere to go
    a.execute("INSERT INTO t VALUES (4, 'not replicated')").unwrap();
    assert_eq!(apply_workers(b), 0);
    assert_eq!(count(b, "SELECT count(*) FROM t"), 2);
}

#[test]
fn workers_stop_on_drop_extension_and_restart_after_errors() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    full_mesh(&[a, b]);
    let workers = |n: &TestNode| {
        n.query_one::<i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('spock apply', 'spock manager')",
        )
        .unwrap()
    };
    assert_eq!(workers(b), 2);
    // an apply error (a table missing on the subscriber) stops the worker, which is
    // started again and, per the default spock.exception_behaviour (transdiscard),
    // records the failed transaction in spock.exception_log and goes on
    for n in [a, b] {
        n.execute("CREATE TABLE later(id int PRIMARY KEY)").unwrap();
    }
    a.execute("SELECT spock.repset_add_table('default', 'later')").unwrap();
    b.execute("DROP TABLE later").unwrap();
    let log_from = b.log_offset();
    a.execute("INSERT INTO later VALUES (1)").unwrap();
    b.wait_for_log(
        log_from,
        "table public.later replicated from the provider does not exist on this node",
        1,
        Duration::from_secs(30),
    );
    wait_for(
        "the failed transaction in exception_log",
        Duration::from_secs(30),
        || {
            b.query_one::<String>(
                "SELECT coalesce(string_agg(table_name || ' ' || operation || ' ' || (error_message LIKE '%does not exist%')::text, ','), '')
                   FROM spock.exception_log",
            )
            .unwrap()
        },
        "later INSERT true".to_string(),
    );
    b.execute("CREATE TABLE later(id int PRIMARY KEY)").unwrap();
    a.execute("INSERT INTO later VALUES (2)").unwrap();
    wait_for(
        "the row after the worker restarted",
        Duration::from_secs(60),
        || count(b, "SELECT count(*) FROM later WHERE id = 2"),
        1,
    );
    assert_eq!(count(b, "SELECT count(*) FROM later"), 1, "the discarded transaction stays discarded");
    // DROP EXTENSION stops the database's manager and apply workers
    b.execute("DROP EXTENSION spock").unwrap();
    wait_for("no spock workers", Duration::from_secs(30), || workers(b), 0);
    assert!(
        b.query_one::<i64>("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock supervisor'").unwrap()
            == 1
    );
}

#[test]
fn a_local_alter_table_on_the_subscriber_is_picked_up() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute("INSERT INTO t VALUES (1, 'before')").unwrap();
    wait_for("first row", Duration::from_secs(30), || count(b, "SELECT count(*) FROM t"), 1);
    // the subscriber gets an extra column with a default: new rows get the default
    b.execute("ALTER TABLE t ADD COLUMN note text DEFAULT 'local default'").unwrap();
    a.execute("INSERT INTO t VALUES (2, 'after')").unwrap();
    a.execute("UPDATE t SET v = 'updated' WHERE id = 1").unwrap();
    wait_for(
        "rows with the local column",
        Duration::from_secs(30),
        || {
            b.query_one::<String>(
                "SELECT string_agg(id || ':' || v || ':' || coalesce(note, '-'), ',' ORDER BY id) FROM t",
            )
            .unwrap()
        },
        "1:updated:local default,2:after:local default".to_string(),
    );
    // Many transactions, each in a change's memory of its own: the default's value
    // must not live there (it once did, and later rows got another row's text or
    // crashed the worker).
    let mut c = a.connect().unwrap();
    for id in 3..103 {
        c.execute("INSERT INTO t VALUES ($1::int, repeat(md5($1::int::text), 3))", &[&id]).unwrap();
    }
    wait_for("the rows", Duration::from_secs(60), || count(b, "SELECT count(*) FROM t"), 102);
    assert_eq!(count(b, "SELECT count(*) FROM t WHERE note IS DISTINCT FROM 'local default'"), 0);
}

#[test]
fn apply_delay_and_sub_alter_options() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    setup_node(b);
    b.execute(&format!("SELECT spock.sub_create('s1', '{}', apply_delay := '3 seconds')", a.dsn("postgres"))).unwrap();
    wait_for(
        "replicating",
        Duration::from_secs(60),
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".to_string(),
    );
    // A transaction is applied no earlier than its commit time plus the delay.
    a.execute("INSERT INTO t VALUES (1, 'delayed')").unwrap();
    let committed = Instant::now();
    // the worker has the transaction and holds it back (on a machine so slow that the
    // delay passed before it arrived, it is applied at once: then only the time counts)
    let waiting_or_applied = || {
        count(b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock apply' AND query = 'waiting for apply_delay'")
            + count(b, "SELECT count(*) FROM t")
    };
    wait_for("the worker waiting for apply_delay", Duration::from_secs(30), || waiting_or_applied() > 0, true);
    let applied = count(b, "SELECT count(*) FROM t");
    assert!(applied == 0 || committed.elapsed() >= Duration::from_millis(2500), "applied before apply_delay passed");
    wait_for("the delayed row", Duration::from_secs(30), || count(b, "SELECT count(*) FROM t"), 1);
    assert!(committed.elapsed() >= Duration::from_millis(2500), "applied after {:?}", committed.elapsed());

    // sub_alter_options: unknown keys and bad values are errors; {} changes nothing.
    let err = b.execute("SELECT spock.sub_alter_options('s1', '{\"nope\": 1}')").unwrap_err().0;
    assert!(err.contains("22023") && err.contains("nope"), "{err}");
    let err = b.execute("SELECT spock.sub_alter_options('s1', '{\"forward_origins\": [\"x\"]}')").unwrap_err().0;
    assert!(err.contains("22023"), "{err}");
    let err = b.execute("SELECT spock.sub_alter_options('s1', '{\"apply_delay\": \"soon\"}')").unwrap_err().0;
    assert!(err.contains("22007") && err.contains("invalid input syntax for type interval"), "{err}");
    let err = b.execute("SELECT spock.sub_alter_options('s1', '{\"apply_delay\": 5}')").unwrap_err().0;
    assert!(err.contains("22023") && err.contains("option \"apply_delay\" must be a string"), "{err}");
    let err = b.execute("SELECT spock.sub_alter_options('s1', '{\"forward_origins\": [1]}')").unwrap_err().0;
    assert!(err.contains("22023") && err.contains("must contain only strings"), "{err}");
    assert!(!b.query_one::<bool>("SELECT spock.sub_alter_options('s1', '{}')").unwrap());
    let err = b.execute("SELECT spock.sub_alter_options('nosuch', '{\"apply_delay\": \"0\"}')").unwrap_err().0;
    assert!(err.contains("42704") && err.contains("subscriber nosuch not found"), "{err}");
    // Without the delay rows arrive at once again (the worker restarts with it).
    assert!(b
        .query_one::<bool>("SELECT spock.sub_alter_options('s1', '{\"apply_delay\": \"0\", \"skip_schema\": [\"x\"]}')")
        .unwrap());
    assert_eq!(
        b.query_one::<String>("SELECT sub_apply_delay::text || ' ' || sub_skip_schema::text FROM spock.subscription")
            .unwrap(),
        "00:00:00 {x}"
    );
    wait_for(
        "replicating",
        Duration::from_secs(60),
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".to_string(),
    );
    a.execute("INSERT INTO t VALUES (2, 'at once')").unwrap();
    wait_for("the undelayed row", Duration::from_secs(30), || count(b, "SELECT count(*) FROM t"), 2);
}

/// The apply worker keeps a table's executor state (its open indexes) across
/// transactions: an index created on the subscriber in between must be maintained
/// by the next replicated rows, and a trigger created there must fire.
#[test]
fn kept_table_state_sees_local_indexes_and_triggers() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g").unwrap();
    wait_for("the first rows", Duration::from_secs(60), || count(b, "SELECT count(*) FROM t"), 50);
    b.execute("CREATE INDEX t_v ON t (v)").unwrap();
    b.execute(
        "CREATE TABLE seen(id int); CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER t_note AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION note();
         ALTER TABLE t ENABLE ALWAYS TRIGGER t_note",
    )
    .unwrap();
    a.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(51, 100) g").unwrap();
    a.execute("UPDATE t SET v = 'w' || id WHERE id <= 10").unwrap();
    for i in 0..20 {
        a.execute(&format!("UPDATE t SET v = 'x{i}' WHERE id = 20")).unwrap();
    }
    wait_for("the later rows", Duration::from_secs(60), || count(b, "SELECT count(*) FROM t WHERE v = 'x19'"), 1);
    assert_eq!(count(b, "SELECT count(*) FROM t"), 100);
    // Every row has its entry in the new index.
    b.execute("CREATE EXTENSION amcheck").unwrap();
    b.execute("SELECT bt_index_check('t_v', true)").unwrap();
    assert_eq!(count(b, "SELECT count(*) FROM t WHERE v = 'x19'"), 1);
    // The trigger fired for the 50 inserts and 30 updates after it was created.
    assert_eq!(count(b, "SELECT count(*) FROM seen"), 80);
}

#[test]
fn a_worker_stopped_on_purpose_comes_back_at_once() {
    // With a restart delay far longer than the waits below, only a worker that the
    // manager starts at once (not as after an error) lets the rows arrive.
    let opts = |name: &str| NodeOptions::new(name).setting("spock.restart_delay_default", "600000");
    let cluster = Cluster::start(vec![opts("n1"), opts("n2")]).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    subscribed_pair(a, b);
    let offset = b.log_offset();
    let arrives = |id: i32| {
        a.execute(&format!("INSERT INTO t VALUES ({id}, 'x')")).unwrap();
        wait_for(
            "the row",
            Duration::from_secs(60),
            || count(b, &format!("SELECT count(*) FROM t WHERE id = {id}")),
            1,
        );
    };
    arrives(1);
    b.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1', immediate := true)").unwrap();
    arrives(2);
    // functions that restart the worker to apply a change
    b.execute("SELECT spock.sub_remove_repset('sub_n2_n1', 'ddl_sql')").unwrap();
    arrives(3);
    b.execute("SELECT spock.sub_alter_options('sub_n2_n1', '{\"apply_delay\": \"0\"}')").unwrap();
    arrives(4);
    // a disable that is rolled back leaves the subscription running
    b.execute("BEGIN; SELECT spock.sub_disable('sub_n2_n1', immediate := true); ROLLBACK").unwrap();
    arrives(5);
    assert!(
        !b.log_since(offset).contains("you don't own a lock"),
        "closing kept tables released locks it did not hold"
    );
}

/// Spock's tests wait for a subscription in a DO block that calls
/// `spock.sub_show_status()` until it says 'replicating': each call reads the
/// workers as they are now, not the transaction's first snapshot of them.
#[test]
fn sub_show_status_sees_the_worker_come_back_within_one_transaction() {
    let cluster = replicating_pair();
    let b = cluster.node(1);
    b.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    assert_eq!(b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(), "disabled");
    // A transaction that looked at the workers while there was none, then waits.
    let mut waiter = b.connect().unwrap();
    waiter.batch_execute("SET statement_timeout = '60s'; BEGIN; SELECT * FROM spock.sub_show_status();").unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    waiter
        .batch_execute(
            "DO $$
             BEGIN
                 WHILE EXISTS (SELECT 1 FROM spock.sub_show_status() WHERE status <> 'replicating') LOOP
                     PERFORM pg_sleep(0.05);
                 END LOOP;
             END$$;
             COMMIT;",
        )
        .unwrap();
}

/// A table of a set that publishes deletes loses its replica identity on the
/// provider (its primary key dropped): its DELETEs carry no key and cannot be
/// replicated. They are skipped with a WARNING naming the table (Spock skips them
/// too), and the stream goes on; before, the walsender failed at that change,
/// forever.
#[test]
fn a_delete_without_replica_identity_is_skipped_with_a_warning() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')").unwrap();
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    let log = a.log_offset();
    a.execute("ALTER TABLE t DROP CONSTRAINT t_pkey; DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (3, 'three')")
        .unwrap();
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(b.query_one::<String>("SELECT string_agg(id::text, ',' ORDER BY id) FROM t").unwrap(), "1,2,3");
    a.wait_for_log(
        log,
        "DELETEs on table public.t are not replicated: the table has no replica identity",
        1,
        Duration::from_secs(30),
    );
}
