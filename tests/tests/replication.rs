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
