//! The `spock_output` plugin on a real PostgreSQL 18: what a subscriber receives.

use spock_core::proto::{Datum, Message, OldTupleKind, ProtoVersion, Tuple};
use spock_tests::decoding::{messages, slot_messages, spock_params, with_param};
use spock_tests::{NodeOptions, TestNode};

fn provider(name: &str) -> TestNode {
    let node = TestNode::start(NodeOptions::new(name)).unwrap();
    node.execute(&format!(
        "CREATE EXTENSION spock; SELECT spock.node_create('{name}', '{}');",
        node.dsn("postgres")
    ))
    .unwrap();
    node
}

fn text(s: &str) -> Datum {
    Datum::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn inserts_updates_deletes_in_a_set_reach_the_subscriber() {
    let node = provider("p1");
    for sql in [
        "CREATE TABLE public.t(id int PRIMARY KEY, v text, n numeric)",
        "SELECT spock.repset_add_table('default', 'public.t')",
        "SELECT pg_create_logical_replication_slot('s', 'spock_output')",
        "INSERT INTO t VALUES (1, 'one', 1.5), (2, NULL, NULL)",
        "UPDATE t SET v = 'uno' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
    ] {
        node.execute(sql).unwrap();
    }
    let params = with_param(spock_params("default"), "binary.want_internal_basetypes", "0");
    let params = with_param(params, "binary.want_binary_basetypes", "0");
    let decoded = slot_messages(&node, "postgres", "s", &params, false).unwrap();
    let Message::Startup(s) = &decoded[0].message else { panic!("first message must be the startup reply: {decoded:?}") };
    assert_eq!(s.get("proto_version"), Some("5"));
    let msgs = messages(&decoded);
    // Txn 1: CREATE TABLE etc. publish nothing. Then the inserts, the update, the delete.
    let kinds: String = msgs.iter().map(|m| m.letter() as char).collect();
    assert_eq!(kinds, "BORIICBOUCBODC", "{msgs:#?}");
    let Message::Relation(r) = &msgs[2] else { unreachable!() };
    assert_eq!((r.nspname.as_str(), r.relname.as_str()), ("public", "t"));
    let cols: Vec<_> = r.columns.iter().map(|c| (c.name.as_str(), c.type_oid, c.is_identity())).collect();
    assert_eq!(cols, vec![("id", 23, true), ("v", 25, false), ("n", 1700, false)]);
    let Message::Origin(o) = &msgs[1] else { unreachable!() };
    assert_eq!(o.origin_name.as_deref(), Some("p1"));
    assert_eq!(u32::from(o.origin_id), spock_core::names::node_id_for_name("p1") as u32);
    assert_eq!(msgs[3], Message::Insert(spock_core::proto::Insert { flags: 0, relid: r.relid, new: Tuple::new(vec![text("1"), text("one"), text("1.5")]) }));
    let Message::Insert(i2) = &msgs[4] else { unreachable!() };
    assert_eq!(i2.new.columns, vec![text("2"), Datum::Null, Datum::Null]);
    let Message::Update(u) = &msgs[8] else { unreachable!() };
    assert!(u.old.is_none(), "key did not change: no old tuple");
    assert_eq!(u.new.columns, vec![text("1"), text("uno"), text("1.5")]);
    let Message::Delete(d) = &msgs[12] else { unreachable!() };
    assert_eq!(d.old.kind, OldTupleKind::Key);
    assert_eq!(d.old.tuple.columns, vec![text("2"), Datum::Null, Datum::Null]);
    // every message of protocol 5 carries the provider's insert position
    assert!(decoded[1..].iter().all(|d| d.remote_insert_lsn.is_some()));
}
