//! Setups many integration tests share: a spock node with table `t(id, v)` in the
//! `default` set, a subscription to another node, a subscribed pair.

use std::time::Duration;

use crate::{wait_for, TestNode};

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
    sub.execute(&format!("SELECT spock.sub_create('sub_{}_{}', '{}')", sub.name, provider.name, provider.dsn("postgres")))
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

/// The single `bigint` a query returns.
pub fn count(n: &TestNode, sql: &str) -> i64 {
    n.query_one::<i64>(sql).unwrap()
}
