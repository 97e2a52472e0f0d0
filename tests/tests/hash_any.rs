//! spock-core's `hash_any` (node ids, slot-name shortening) against the server's own
//! `hashtext()` on many random strings.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use spock_core::names::{hash_any, node_id_for_name};
use spock_tests::NodeOptions;
use spock_tests::TestNode;

#[test]
fn hash_any_equals_postgres_hashtext() {
    let node = TestNode::start(NodeOptions::new("hash").without_preload()).unwrap();
    let client = std::cell::RefCell::new(node.connect().unwrap());
    let stmt =
        client.borrow_mut().prepare("SELECT hashtext($1::text), (hashtext($1::text)::bigint & 65535)::int").unwrap();
    let mut runner = TestRunner::new(Config { cases: 500, ..Config::default() });
    runner
        .run(&"[^\u{0}]{0,80}", |s| {
            let row = client.borrow_mut().query_one(&stmt, &[&s]).unwrap();
            let pg: i32 = row.get(0);
            let pg_node_id: i32 = row.get(1);
            prop_assert_eq!(hash_any(s.as_bytes()) as i32, pg, "hash of {:?}", s);
            prop_assert_eq!(i32::from(node_id_for_name(&s)), pg_node_id);
            Ok(())
        })
        .unwrap();
}
