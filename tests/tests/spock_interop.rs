//! Mixed clusters of spock-rs and pgEdge Spock nodes.
//!
//! The tests that need Spock run when `SPOCK_TEST_SPOCK_BINDIR` names the bin
//! directory of a PostgreSQL built with Spock's patches and Spock installed
//! (scripts/build-spock.sh builds one; scripts/spock-interop.sh builds it and runs
//! this file). Without it they print why they did not run and pass.
//!
//! What does not need Spock runs always: `spock.read_peer_progress`, which a Spock
//! subscriber calls on its provider when it creates a subscription.

use std::path::PathBuf;
use std::time::Duration;

use spock_tests::fixtures::{setup_node, subscribe, wait_replicating};
use spock_tests::{wait_for, Cluster, NodeOptions, PgInstall, TestNode};

const WAIT: Duration = Duration::from_secs(90);

/// The Spock installation, or `None` (with the reason printed) when there is none.
fn spock_install(test: &str) -> Option<PgInstall> {
    let Some(bindir) = std::env::var_os("SPOCK_TEST_SPOCK_BINDIR") else {
        eprintln!(
            "{test}: skipped: no pgEdge Spock build (set SPOCK_TEST_SPOCK_BINDIR, or run scripts/spock-interop.sh)"
        );
        return None;
    };
    let install =
        PgInstall::at(&PathBuf::from(bindir)).expect("SPOCK_TEST_SPOCK_BINDIR is not a PostgreSQL bin directory");
    Some(install)
}

/// A node of each kind as `kinds` says (`r`: spock-rs, `s`: Spock), named
/// r1/s1/r2/..., started in parallel.
fn mixed(kinds: &str, spock: &PgInstall) -> Cluster {
    let mut count = std::collections::HashMap::new();
    let options = kinds
        .chars()
        .map(|k| {
            let i = count.entry(k).and_modify(|c| *c += 1).or_insert(1);
            let o = NodeOptions::new(format!("{k}{i}"));
            if k == 's' {
                o.install(spock.clone())
            } else {
                o
            }
        })
        .collect();
    Cluster::start(options).unwrap()
}

/// Whether `n` runs Spock (not spock-rs).
fn is_spock(n: &TestNode) -> bool {
    n.name.starts_with('s')
}

/// `CREATE EXTENSION spock` and the node.
fn create_node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
}

/// Subscription `sub_<sub>_<provider>` created with Spock's API (the same call on
/// both kinds).
fn sub_create(sub: &TestNode, provider: &TestNode, structure: bool, data: bool) {
    sub.execute(&format!(
        "SELECT spock.sub_create('sub_{}_{}', '{}', synchronize_structure := {structure}, synchronize_data := {data})",
        sub.name,
        provider.name,
        provider.dsn("postgres")
    ))
    .unwrap();
}

/// Waits until every subscription of `n` replicates and its tables are synchronized.
fn wait_ready(n: &TestNode, subscriptions: i64) {
    wait_replicating(n, subscriptions);
    wait_for(
        &format!("tables of {} synchronized", n.name),
        WAIT,
        || {
            n.query_one::<i64>("SELECT count(*) FROM spock.local_sync_status WHERE sync_status NOT IN ('r', 'y')")
                .unwrap()
        },
        0,
    );
}

/// A sync event on `provider` that `subscriber` passes.
fn sync(provider: &TestNode, subscriber: &TestNode) {
    let lsn: String = provider.query_one("SELECT spock.sync_event()::text").unwrap();
    let passed: bool = subscriber
        .query_one(&format!("CALL spock.wait_for_sync_event(NULL, '{}'::name, '{lsn}'::pg_lsn, 60)", provider.name))
        .unwrap();
    assert!(passed, "{} did not pass {}'s sync event at {lsn}", subscriber.name, provider.name);
}

/// `count:md5` of a query's rows, ordered.
fn digest(n: &TestNode, table: &str, order: &str) -> String {
    n.query_text(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY {order})), '') FROM {table} x"
    ))
    .unwrap()
}

#[test]
fn read_peer_progress_gives_a_header_then_each_peer_a_new_node_needs() {
    // n1 subscribes to n2 and n3; a fourth node joining through n1 reads, on n1,
    // where n1 is in n2's and n3's WAL.
    let cluster = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (cluster.node(0), cluster.node(1), cluster.node(2));
    for n in [n1, n2, n3] {
        setup_node(n);
    }
    subscribe(n1, n2);
    subscribe(n1, n3);
    wait_replicating(n1, 2);
    n2.execute("INSERT INTO t VALUES (2, 'from n2')").unwrap();
    n3.execute("INSERT INTO t VALUES (3, 'from n3')").unwrap();
    sync(n2, n1);
    sync(n3, n1);
    n1.execute("SELECT pg_create_logical_replication_slot('joining', 'spock_output')").unwrap();
    let id = |n: &TestNode| n.query_one::<i64>("SELECT node_id::int8 FROM spock.node_info()").unwrap();
    let (id1, id2, id3) = (id(n1), id(n2), id(n3));
    let rows = n1
        .query_text(&format!(
            "SELECT string_agg(concat_ws('|', lsn = (SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'joining'),
                                         snapshot, dbid IS NOT NULL, node_id, remote_node_id, remote_commit_ts IS NOT NULL,
                                         remote_commit_lsn = spock._subscription_progress(
                                             (SELECT sub_slot_name FROM spock.subscription WHERE sub_origin = r.remote_node_id)),
                                         remote_commit_lsn > '0/0', remote_insert_lsn >= remote_commit_lsn,
                                         received_lsn >= remote_commit_lsn, updated_by_decode), E'\\n')
               FROM spock.read_peer_progress('joining', {id1}, 4242) r"
        ))
        .unwrap();
    let (lo, hi) = if id2 < id3 { (id2, id3) } else { (id3, id2) };
    assert_eq!(rows, format!("t||f|f\nt||t|{id1}|{lo}|t|t|t|t|t|f\nt||t|{id1}|{hi}|t|t|t|t|t|f"));
    // The joining node itself is left out; no slot: a NULL restart LSN, still the header.
    assert_eq!(
        n1.query_text(&format!("SELECT count(*) FROM spock.read_peer_progress('joining', {id1}, {id2})")).unwrap(),
        "2"
    );
    assert_eq!(
        n1.query_text(&format!(
            "SELECT count(*) || ':' || count(lsn) FROM spock.read_peer_progress('none', {id1}, 4242)"
        ))
        .unwrap(),
        "3:0"
    );
    // Not for PUBLIC.
    n1.execute("CREATE ROLE plain LOGIN").unwrap();
    let mut c = n1.connect_as("postgres", "plain").unwrap();
    let e = c.batch_execute(&format!("SELECT * FROM spock.read_peer_progress('joining', {id1}, 4242)")).unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
}

/// A Spock node and a spock-rs node subscribe to each other, each with Spock's
/// own `sub_create` and an initial sync of the other's table;
/// then rows, sync events, both-way conflicts (last update wins on both kinds),
/// DDL and sequences, in both directions.
#[test]
fn a_spock_node_and_a_spock_rs_node_replicate_both_ways() {
    let Some(spock) = spock_install("a_spock_node_and_a_spock_rs_node_replicate_both_ways") else { return };
    let cluster = mixed("rs", &spock);
    let (r1, s1) = (cluster.node(0), cluster.node(1));
    for n in [r1, s1] {
        create_node(n);
    }
    assert!(is_spock(s1) && !is_spock(r1));
    // Initial sync, both ways: a table of each node reaches the other.
    r1.execute("CREATE TABLE from_r (id int PRIMARY KEY, v text, n numeric, b bytea, j jsonb, a int[]);
                INSERT INTO from_r SELECT g, 'r ' || g, g / 7.0, decode(md5(g::text), 'hex'), jsonb_build_object('g', g),
                                          ARRAY[g, g + 1] FROM generate_series(1, 2000) g;
                SELECT spock.repset_add_table('default', 'from_r');")
        .unwrap();
    s1.execute(
        "CREATE TABLE from_s (id int PRIMARY KEY, v text);
                INSERT INTO from_s SELECT g, 's ' || g FROM generate_series(1, 1500) g;
                SELECT spock.repset_add_table('default', 'from_s');",
    )
    .unwrap();
    // Structure and data from spock-rs to Spock; back, the data only (a structure
    // sync dumps the whole database, and from_r is on both nodes by then: Spock's
    // restore refuses that as ours does).
    // Each node publishes the other's table only once its own data sync is done (the
    // copy would otherwise bring back rows written here, which the sync refuses).
    sub_create(s1, r1, true, true);
    wait_ready(s1, 1);
    r1.execute("CREATE TABLE from_s (id int PRIMARY KEY, v text)").unwrap();
    sub_create(r1, s1, false, true);
    wait_ready(r1, 1);
    s1.execute("SELECT spock.repset_add_table('default', 'from_r')").unwrap();
    r1.execute("SELECT spock.repset_add_table('default', 'from_s')").unwrap();
    assert_eq!(digest(s1, "from_r", "id"), digest(r1, "from_r", "id"));
    assert_eq!(digest(r1, "from_s", "id"), digest(s1, "from_s", "id"));

    // Changes and sync events, both ways.
    r1.execute(
        "INSERT INTO from_r (id, v) VALUES (5000, 'new on r1'); UPDATE from_s SET v = v || ' by r1' WHERE id <= 10;
                DELETE FROM from_s WHERE id BETWEEN 11 AND 20;",
    )
    .unwrap();
    s1.execute(
        "INSERT INTO from_s VALUES (5000, 'new on s1'); UPDATE from_r SET v = v || ' by s1' WHERE id <= 10;
                DELETE FROM from_r WHERE id BETWEEN 11 AND 20;",
    )
    .unwrap();
    sync(r1, s1);
    sync(s1, r1);
    for t in ["from_r", "from_s"] {
        assert_eq!(digest(r1, t, "id"), digest(s1, t, "id"), "{t}");
    }
    assert_eq!(r1.query_text("SELECT count(*) FROM from_r WHERE v LIKE '% by s1'").unwrap(), "10");

    // Both-way conflicts: each node updates the same rows while the other does not
    // apply; the later commit wins everywhere.
    for (n, other) in [(r1, s1), (s1, r1)] {
        n.execute(&format!("SELECT spock.sub_disable('sub_{}_{}', immediate := true)", n.name, other.name)).unwrap();
    }
    r1.execute("UPDATE from_r SET v = 'r1 first' WHERE id = 1; UPDATE from_r SET v = 'r1 second' WHERE id = 2")
        .unwrap();
    s1.execute("UPDATE from_r SET v = 's1 later' WHERE id = 1").unwrap();
    r1.execute("UPDATE from_r SET v = 'r1 later' WHERE id = 2").unwrap();
    s1.execute("UPDATE from_r SET v = 's1 later still' WHERE id = 2").unwrap();
    for (n, other) in [(r1, s1), (s1, r1)] {
        n.execute(&format!("SELECT spock.sub_enable('sub_{}_{}')", n.name, other.name)).unwrap();
    }
    wait_replicating(r1, 1);
    wait_replicating(s1, 1);
    sync(r1, s1);
    sync(s1, r1);
    for n in [r1, s1] {
        assert_eq!(
            n.query_text("SELECT string_agg(v, ',' ORDER BY id) FROM from_r WHERE id IN (1, 2)").unwrap(),
            "s1 later,s1 later still",
            "on {}",
            n.name
        );
    }
    assert_eq!(digest(r1, "from_r", "id"), digest(s1, "from_r", "id"));

    // DDL through replicate_ddl, from each side, then rows that use it.
    r1.execute("SELECT spock.replicate_ddl('ALTER TABLE public.from_r ADD COLUMN extra int')").unwrap();
    sync(r1, s1);
    s1.execute("UPDATE from_r SET extra = 7 WHERE id = 3").unwrap();
    s1.execute("SELECT spock.replicate_ddl('CREATE TABLE public.made_on_s (id int PRIMARY KEY, v text)')").unwrap();
    sync(s1, r1);
    for n in [r1, s1] {
        n.execute("SELECT spock.repset_add_table('default', 'made_on_s')").unwrap();
    }
    r1.execute("INSERT INTO made_on_s VALUES (1, 'from r1')").unwrap();
    s1.execute("INSERT INTO made_on_s VALUES (2, 'from s1')").unwrap();
    sync(r1, s1);
    sync(s1, r1);
    assert_eq!(r1.query_text("SELECT extra FROM from_r WHERE id = 3").unwrap(), "7");
    for t in ["from_r", "made_on_s"] {
        assert_eq!(digest(r1, t, "id"), digest(s1, t, "id"), "{t}");
    }

    // Sequences: a sequence of each node, synchronized to the other.
    for n in [r1, s1] {
        n.execute(&format!(
            "CREATE SEQUENCE seq_{0}; SELECT nextval('seq_{0}') FROM generate_series(1, 50);
             SELECT spock.repset_add_seq('default', 'seq_{0}');",
            n.name
        ))
        .unwrap();
    }
    for (n, other) in [(r1, s1), (s1, r1)] {
        other.execute(&format!("CREATE SEQUENCE seq_{}", n.name)).unwrap();
        n.execute(&format!("SELECT spock.sync_seq('seq_{}')", n.name)).unwrap();
        sync(n, other);
        let v: i64 = other.query_one(&format!("SELECT last_value FROM seq_{}", n.name)).unwrap();
        assert!(v >= 50, "seq_{} on {}: {v}", n.name, other.name);
    }
}

/// `count:md5` of each pgbench table on `n`.
fn pgbench_digests(n: &TestNode) -> Vec<String> {
    [
        ("(SELECT aid, bid, abalance FROM pgbench_accounts)", "aid"),
        ("(SELECT bid, bbalance FROM pgbench_branches)", "bid"),
        ("(SELECT tid, bid, tbalance FROM pgbench_tellers)", "tid"),
        ("(SELECT tid, bid, aid, delta, mtime FROM pgbench_history)", "x::text"),
    ]
    .iter()
    .map(|(t, order)| digest(n, t, order))
    .collect()
}

/// Two Spock nodes and a spock-rs node in a full mesh (six subscriptions made with
/// Spock's API on each side), pgbench on all three at once: every update of a hot
/// branch or teller row conflicts somewhere and last-update-wins must pick the same
/// version on both kinds; every history row reaches every node once.
#[test]
fn a_mesh_of_two_spock_nodes_and_one_spock_rs_node_converges_under_pgbench() {
    let Some(spock) = spock_install("a_mesh_of_two_spock_nodes_and_one_spock_rs_node_converges_under_pgbench") else {
        return;
    };
    let cluster = mixed("ssr", &spock);
    let nodes = [cluster.node(0), cluster.node(1), cluster.node(2)];
    for n in nodes {
        create_node(n);
        let (ok, _, err) = n.run_tool("pgbench", &["-i", "-s", "1", "-q", &n.dsn("postgres")]).unwrap();
        assert!(ok, "pgbench -i on {}: {err}", n.name);
        n.execute(
            "SELECT spock.repset_add_table('default', t) FROM unnest(ARRAY['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers']) t;
             SELECT spock.repset_add_table('default_insert_only', 'pgbench_history');",
        )
        .unwrap();
    }
    assert!(is_spock(nodes[0]) && is_spock(nodes[1]) && !is_spock(nodes[2]));
    nodes[2].execute("ALTER SYSTEM SET spock.save_resolutions = on").unwrap();
    nodes[2].execute("SELECT pg_reload_conf()").unwrap();
    for n in nodes {
        for p in nodes {
            if n.name != p.name {
                sub_create(n, p, false, false);
            }
        }
    }
    for n in nodes {
        wait_ready(n, 2);
    }
    let before = nodes.map(|n| n.query_one::<i64>("SELECT count(*) FROM pgbench_history").unwrap());
    assert_eq!(before, [0, 0, 0]);
    // pgbench on every node at once, a fixed number of transactions each.
    let runs: Vec<(bool, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                scope.spawn(move || {
                    let (ok, _, err) =
                        n.run_tool("pgbench", &["-n", "-c", "2", "-j", "1", "-t", "300", &n.dsn("postgres")]).unwrap();
                    (ok, format!("{}: {err}", n.name))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (ok, err) in &runs {
        assert!(ok, "pgbench failed on {err}");
    }
    // Every node passes every other node's sync event, written after its last
    // pgbench commit (nothing is forwarded: each node applies each origin from its
    // own subscription to it).
    for p in nodes {
        for s in nodes {
            if p.name != s.name {
                sync(p, s);
            }
        }
    }
    let reference = pgbench_digests(nodes[0]);
    for n in &nodes[1..] {
        assert_eq!(pgbench_digests(n), reference, "{} differs from {}", n.name, nodes[0].name);
    }
    // 3 nodes x 2 clients x 300 transactions, each one history row, on every node.
    for n in nodes {
        assert_eq!(n.query_one::<i64>("SELECT count(*) FROM pgbench_history").unwrap(), 1800, "on {}", n.name);
    }
    // Conflicts happened and were resolved on the spock-rs node (branch rows are hot).
    let resolved: i64 = nodes[2].query_one("SELECT count(*) FROM spock.resolutions").unwrap();
    assert!(resolved > 0, "no conflict was resolved on r1");
}

/// Writes on `n` until `stop`: each transaction inserts its next row into `ledger`
/// (keyed) and `events` (no key), and updates the row it wrote five transactions
/// before; `done` counts committed transactions.
fn writer(
    n: &TestNode,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicI64>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let mut client = n.connect().unwrap();
    let name = n.name.clone();
    std::thread::spawn(move || {
        let mut seq = 0i64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO ledger VALUES ('{name}', {seq}, 'new');
                     INSERT INTO events VALUES ('{name}', {seq});
                     UPDATE ledger SET v = 'updated' WHERE node = '{name}' AND seq = {};
                     COMMIT;",
                    seq - 5
                ))
                .unwrap();
            done.store(seq, Ordering::Relaxed);
        }
    })
}

/// A running [`writer`].
struct Writer {
    node: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicI64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Starts a [`writer`] on `n` and waits until it wrote a few transactions.
fn start_writer(writers: &mut Vec<Writer>, n: &TestNode) {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let (stop, done) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicI64::new(0)));
    let handle = writer(n, stop.clone(), done.clone());
    wait_for(&format!("{} writing", n.name), WAIT, || done.load(Ordering::Relaxed) > 10, true);
    writers.push(Writer { node: n.name.clone(), stop, done, handle: Some(handle) });
}

/// Stops the writer of node `name` and waits for its last transaction.
fn stop_writer(writers: &mut [Writer], name: &str) {
    let w = writers.iter_mut().find(|w| w.node == name).unwrap();
    w.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.handle.take().unwrap().join().unwrap();
}

/// Node `c` joins `a` and `b` as docs/sync.md says (a disabled subscription to `b`
/// whose slot `b` creates at once, `a` past `b`'s sync event, the structure and data
/// copied from `a`, then the subscription to `b`), publishes the tables, and `a` and
/// `b` subscribe to it.
fn join(a: &TestNode, b: &TestNode, c: &TestNode) {
    create_node(c);
    c.execute(&format!(
        "SELECT spock.sub_create('sub_{}_{}', '{}', enabled := false)",
        c.name,
        b.name,
        b.dsn("postgres")
    ))
    .unwrap();
    let slot: String = c
        .query_one(&format!(
            "SELECT sub_slot_name::text FROM spock.subscription WHERE sub_name = 'sub_{}_{}'",
            c.name, b.name
        ))
        .unwrap();
    b.execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'spock_output')")).unwrap();
    sync(b, a);
    sub_create(c, a, true, true);
    wait_for(
        &format!("{} synchronized from {}", c.name, a.name),
        WAIT,
        || {
            c.query_one::<i64>("SELECT count(*) FROM spock.local_sync_status WHERE sync_status NOT IN ('r', 'y')")
                .unwrap()
        },
        0,
    );
    c.execute(&format!("SELECT spock.sub_enable('sub_{}_{}')", c.name, b.name)).unwrap();
    c.execute(
        "SELECT spock.repset_add_table('default', 'ledger');
         SELECT spock.repset_add_table('default_insert_only', 'events');",
    )
    .unwrap();
    wait_ready(c, 2);
    for n in [a, b] {
        sub_create(n, c, false, false);
    }
    // The new node's writes reach a subscriber once its slot exists (made by the
    // subscriber's worker, as Spock's): the caller writes on `c` only after that.
    for n in [a, b] {
        let sub = format!("sub_{}_{}", n.name, c.name);
        wait_for(
            &format!("{sub} replicating"),
            WAIT,
            || {
                n.query_one::<i64>(&format!(
                "SELECT count(*) FROM spock.sub_show_status() WHERE subscription_name = '{sub}' AND status = 'replicating'"
            ))
            .unwrap()
            },
            1,
        );
    }
}

/// Node `gone` leaves: its writes stopped, every node has them, then the
/// subscriptions from and to it are dropped.
fn retire(gone: &TestNode, stay: &[&TestNode]) {
    for n in stay {
        sync(gone, n);
    }
    for n in stay {
        n.execute(&format!("SELECT spock.sub_drop('sub_{}_{}')", n.name, gone.name)).unwrap();
        gone.execute(&format!("SELECT spock.sub_drop('sub_{}_{}')", gone.name, n.name)).unwrap();
    }
}

/// A mesh of two Spock nodes moves to two spock-rs nodes one node at a time while
/// every node in it keeps writing: r1 joins (copying from s1), s2 leaves, r2 joins
/// (copying from r1, the spock-rs node), s1 leaves. Every row written anywhere is on
/// both remaining nodes exactly once (a keyed and a keyless table), with its last
/// update, and the two are identical.
#[test]
fn a_spock_mesh_moves_to_spock_rs_one_node_at_a_time() {
    use std::sync::atomic::Ordering;
    let Some(spock) = spock_install("a_spock_mesh_moves_to_spock_rs_one_node_at_a_time") else { return };
    let cluster = mixed("ssrr", &spock);
    let (s1, s2, r1, r2) = (cluster.node(0), cluster.node(1), cluster.node(2), cluster.node(3));
    for n in [s1, s2] {
        create_node(n);
        n.execute(
            "CREATE TABLE ledger (node text, seq int, v text, PRIMARY KEY (node, seq));
             CREATE TABLE events (node text, seq int);
             SELECT spock.repset_add_table('default', 'ledger');
             SELECT spock.repset_add_table('default_insert_only', 'events');",
        )
        .unwrap();
    }
    sub_create(s1, s2, false, false);
    sub_create(s2, s1, false, false);
    wait_ready(s1, 1);
    wait_ready(s2, 1);

    let mut writers: Vec<Writer> = Vec::new();
    start_writer(&mut writers, s1);
    start_writer(&mut writers, s2);

    // r1 joins s1 and s2 while both write; then it writes too, and s2 leaves.
    join(s1, s2, r1);
    start_writer(&mut writers, r1);
    stop_writer(&mut writers, "s2");
    retire(s2, &[s1, r1]);
    // r2 joins r1 and s1 (copying from the spock-rs node); s1 leaves.
    join(r1, s1, r2);
    start_writer(&mut writers, r2);
    stop_writer(&mut writers, "s1");
    retire(s1, &[r1, r2]);
    stop_writer(&mut writers, "r1");
    stop_writer(&mut writers, "r2");
    sync(r1, r2);
    sync(r2, r1);

    let written: i64 = writers.iter().map(|w| w.done.load(Ordering::Relaxed)).sum();
    eprintln!(
        "written: {}",
        writers.iter().map(|w| format!("{} {}", w.node, w.done.load(Ordering::Relaxed))).collect::<Vec<_>>().join(", ")
    );
    for n in [r1, r2] {
        let (rows, distinct, events, distinct_events): (i64, i64, i64, i64) = {
            let mut c = n.connect().unwrap();
            let r = c
                .query_one(
                    "SELECT (SELECT count(*) FROM ledger), (SELECT count(DISTINCT (node, seq)) FROM ledger),
                            (SELECT count(*) FROM events), (SELECT count(DISTINCT (node, seq)) FROM events)",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        assert_eq!((rows, distinct, events, distinct_events), (written, written, written, written), "on {}", n.name);
        // Every row but each writer's last five got its update.
        let stale: i64 = n
            .query_one(
                "SELECT count(*) FROM ledger l WHERE v = 'new'
                   AND seq <= (SELECT max(seq) FROM ledger m WHERE m.node = l.node) - 5",
            )
            .unwrap();
        assert_eq!(stale, 0, "updates lost on {}", n.name);
    }
    assert_eq!(digest(r1, "ledger", "node, seq"), digest(r2, "ledger", "node, seq"));
    assert_eq!(digest(r1, "events", "node, seq"), digest(r2, "events", "node, seq"));
}
