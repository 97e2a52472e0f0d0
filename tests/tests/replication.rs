//! Subscriptions between real nodes: rows reach the other node, both ways.

use std::time::{Duration, Instant};

use spock_tests::{Cluster, TestNode};

fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, timeout: Duration, mut f: impl FnMut() -> T, want: T) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = f();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}: got {got:?}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup_node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
}

fn subscribe(sub: &TestNode, provider: &TestNode) {
    sub.execute(&format!(
        "SELECT spock.sub_create('sub_{}_{}', '{}')",
        sub.name,
        provider.name,
        provider.dsn("postgres")
    ))
    .unwrap();
}

fn count(n: &TestNode, sql: &str) -> i64 {
    n.query_one::<i64>(sql).unwrap()
}

#[test]
fn two_nodes_replicate_both_ways() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    setup_node(b);
    subscribe(b, a);
    subscribe(a, b);
    wait_for("both subscriptions replicating", Duration::from_secs(60), || {
        (
            a.query_one::<String>("SELECT string_agg(status, ',') FROM spock.sub_show_status()").unwrap(),
            b.query_one::<String>("SELECT string_agg(status, ',') FROM spock.sub_show_status()").unwrap(),
        )
    }, ("replicating".to_string(), "replicating".to_string()));
    a.execute("INSERT INTO t SELECT g, 'from n1' FROM generate_series(1, 100) g").unwrap();
    b.execute("INSERT INTO t SELECT g, 'from n2' FROM generate_series(101, 200) g").unwrap();
    for n in [a, b] {
        wait_for("200 rows on every node", Duration::from_secs(60), || count(n, "SELECT count(*) FROM t"), 200);
    }
    a.execute("UPDATE t SET v = 'changed on n1' WHERE id <= 10").unwrap();
    b.execute("DELETE FROM t WHERE id > 190").unwrap();
    for n in [a, b] {
        wait_for("the update", Duration::from_secs(60), || count(n, "SELECT count(*) FROM t WHERE v = 'changed on n1'"), 10);
        wait_for("the delete", Duration::from_secs(60), || count(n, "SELECT count(*) FROM t"), 190);
    }
    // no loop: each row arrived once, nothing bounced back
    std::thread::sleep(Duration::from_secs(1));
    for n in [a, b] {
        assert_eq!(count(n, "SELECT count(*) FROM t"), 190);
    }
    let md5 = |n: &TestNode| n.query_one::<String>("SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t").unwrap();
    assert_eq!(md5(a), md5(b));
}

fn mesh(nodes: &[&TestNode]) {
    for n in nodes {
        setup_node(n);
    }
    for s in nodes {
        for p in nodes {
            if s.name != p.name {
                subscribe(s, p);
            }
        }
    }
    for n in nodes {
        wait_for(
            "every subscription replicating",
            Duration::from_secs(60),
            || n.query_one::<i64>("SELECT count(*) FROM spock.sub_show_status() WHERE status = 'replicating'").unwrap(),
            nodes.len() as i64 - 1,
        );
    }
}

fn table_hash(n: &TestNode) -> String {
    n.query_one::<String>("SELECT coalesce(md5(string_agg(id || ':' || coalesce(v, '-'), ',' ORDER BY id)), '') FROM t").unwrap()
}

#[test]
fn three_node_mesh_converges_under_concurrent_writes() {
    let cluster = Cluster::start_n(3).unwrap();
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    mesh(&nodes);
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
    std::thread::sleep(Duration::from_secs(1));
    for n in &nodes {
        assert_eq!(count(n, "SELECT count(*) FROM t"), 540);
    }
}

#[test]
fn concurrent_updates_of_one_row_resolve_the_same_everywhere() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    mesh(&[a, b]);
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
    std::thread::sleep(Duration::from_millis(20));
    b.execute("UPDATE t SET v = 'n2 wrote last' WHERE id = 1").unwrap();
    a.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    b.execute("SELECT spock.sub_enable('sub_n2_n1')").unwrap();
    for n in [a, b] {
        wait_for("last update wins everywhere", Duration::from_secs(60), || n.query_one::<String>("SELECT v FROM t WHERE id = 1").unwrap(), "n2 wrote last".to_string());
    }
    // each node recorded its side of the conflict
    wait_for(
        "resolution on n1",
        Duration::from_secs(30),
        || a.query_one::<String>("SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ','), '') FROM spock.resolutions").unwrap(),
        "update_origin_differs:apply_remote".to_string(),
    );
    wait_for(
        "resolution on n2",
        Duration::from_secs(30),
        || b.query_one::<String>("SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ','), '') FROM spock.resolutions").unwrap(),
        "update_origin_differs:keep_local".to_string(),
    );
}
