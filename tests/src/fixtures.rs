//! Setups many integration tests share: a spock node with table `t(id, v)` in the
//! `default` set, a subscription to another node, a subscribed pair.

use std::time::Duration;

use crate::{wait_for, Cluster, TestNode};

/// `CREATE EXTENSION spock`, the node, and table `t(id int PRIMARY KEY, v text)` in
/// the `default` replication set.
pub fn setup_node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
}

/// Subscription `sub_<sub>_<provider>` of `sub` to `provider`.
pub fn subscribe(sub: &TestNode, provider: &TestNode) {
    sub.execute(&format!(
        "SELECT spock.sub_create('sub_{}_{}', '{}')",
        sub.name,
        provider.name,
        provider.dsn("postgres")
    ))
    .unwrap();
}

/// Waits until `subscriptions` subscriptions of `n` are replicating.
pub fn wait_replicating(n: &TestNode, subscriptions: i64) {
    wait_for(
        "subscriptions replicating",
        Duration::from_secs(60),
        || n.query_one::<i64>("SELECT count(*) FROM spock.sub_show_status() WHERE status = 'replicating'").unwrap(),
        subscriptions,
    );
}

/// Both nodes set up, `b` subscribed to `a` and replicating.
pub fn subscribed_pair(a: &TestNode, b: &TestNode) {
    setup_node(a);
    setup_node(b);
    subscribe(b, a);
    wait_replicating(b, 1);
}

/// Both nodes set up, each subscribed to the other and replicating.
pub fn mutual_pair(a: &TestNode, b: &TestNode) {
    setup_node(a);
    setup_node(b);
    subscribe(b, a);
    subscribe(a, b);
    wait_replicating(a, 1);
    wait_replicating(b, 1);
}

/// Every node set up and subscribed to every other, all replicating.
pub fn full_mesh(nodes: &[&TestNode]) {
    for n in nodes {
        setup_node(n);
    }
    for s in nodes {
        for p in nodes.iter().filter(|p| p.name != s.name) {
            subscribe(s, p);
        }
    }
    for n in nodes {
        wait_replicating(n, nodes.len() as i64 - 1);
    }
}

/// Holds back both directions of a mutual pair (as a lag does): `a` stops applying
/// `b`'s changes and `b` stops applying `a`'s, until [`resume_pair`].
pub fn pause_pair(a: &TestNode, b: &TestNode) {
    a.execute(&format!("SELECT spock.sub_disable('sub_{}_{}', immediate := true)", a.name, b.name)).unwrap();
    b.execute(&format!("SELECT spock.sub_disable('sub_{}_{}', immediate := true)", b.name, a.name)).unwrap();
}

/// Lets both directions of a pair held back by [`pause_pair`] go again.
pub fn resume_pair(a: &TestNode, b: &TestNode) {
    a.execute(&format!("SELECT spock.sub_enable('sub_{}_{}')", a.name, b.name)).unwrap();
    b.execute(&format!("SELECT spock.sub_enable('sub_{}_{}')", b.name, a.name)).unwrap();
}

/// Two nodes n1 and n2 started and set up as by [`subscribed_pair`]: n2 replicates
/// from n1.
pub fn replicating_pair() -> Cluster {
    let cluster = Cluster::start_n(2).unwrap();
    subscribed_pair(cluster.node(0), cluster.node(1));
    cluster
}

/// `spock.exception_log` in command order as `table/operation/label`: `label` is
/// `failed_label` where the error message is `LIKE failed_pattern`, `collateral`
/// otherwise.
pub fn exception_log(n: &TestNode, failed_pattern: &str, failed_label: &str) -> String {
    n.query_one::<String>(&format!(
        "SELECT coalesce(string_agg(coalesce(table_name, '') || '/' || operation || '/' ||
                CASE WHEN error_message LIKE '{failed_pattern}' THEN '{failed_label}' ELSE 'collateral' END, ','
                ORDER BY command_counter), '')
           FROM spock.exception_log"
    ))
    .unwrap()
}

/// The single `bigint` a query returns.
pub fn count(n: &TestNode, sql: &str) -> i64 {
    n.query_one::<i64>(sql).unwrap()
}

/// Waits until `subscriber` has applied everything `provider` committed before this
/// call: a sync event written on the provider goes through the same stream and is
/// waited for on the subscriber. A test that asserts that nothing more arrives (no
/// loop, nothing twice) calls this first instead of sleeping.
pub fn sync_through(provider: &TestNode, subscriber: &TestNode) {
    let lsn: String = provider.query_one("SELECT spock.sync_event()::text").unwrap();
    let reached: bool = subscriber
        .query_one(&format!("CALL spock.wait_for_sync_event(NULL, '{}'::name, '{lsn}'::pg_lsn, 120)", provider.name))
        .unwrap();
    assert!(
        reached,
        "node {} did not apply node {}'s sync event at {lsn} within 120 s",
        subscriber.name, provider.name
    );
}

/// [`sync_through`] for every ordered pair of a full mesh.
pub fn sync_mesh(nodes: &[&TestNode]) {
    for p in nodes {
        for s in nodes.iter().filter(|s| s.name != p.name) {
            sync_through(p, s);
        }
    }
}

/// Returns once a commit on `later` gets a later commit timestamp than every commit
/// `earlier` made so far (same machine, same clock: at once in practice). Orders
/// two writes for last-update-wins without a fixed sleep.
pub fn next_commit_is_later(earlier: &TestNode, later: &TestNode) {
    let t: String = earlier.query_one("SELECT clock_timestamp()::text").unwrap();
    wait_for(
        "a later clock",
        Duration::from_secs(10),
        || later.query_one::<bool>(&format!("SELECT clock_timestamp() > '{t}'::timestamptz")).unwrap(),
        true,
    );
}

/// The number of spock apply workers running on `n`.
pub fn apply_workers(n: &TestNode) -> i64 {
    count(n, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock apply'")
}

/// `pg_reload_conf()`, returning once every process has been told
/// ([`TestNode::reload_conf`]).
pub fn reload(n: &TestNode) {
    n.reload_conf().unwrap();
}
