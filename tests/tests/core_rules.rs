//! The SQL API applies spock-core's rules, not copies of them: on a real server,
//! what the SQL functions produce (node ids, default sets, queued `A`/`S` messages,
//! the sequence margin, the replica-identity requirement, subscription origins)
//! equals what spock-core computes.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use spock_core::ddl::{
    sequence_sync_target, LocalSequence, QueuedMessage, NODE_DEFAULT_SETS, REPLICATE_DDL_DEFAULT_SET,
    SEQUENCE_SYNC_MARGIN,
};
use spock_core::names::{node_id_for_name, origin_node_of};
use spock_tests::{NodeOptions, TestNode};

fn node_with_extension(name: &str) -> TestNode {
    let node = TestNode::start(NodeOptions::new(name)).unwrap();
    node.execute("CREATE EXTENSION spock").unwrap();
    node
}

#[test]
fn node_create_gives_cores_node_id_and_default_sets() {
    let node = node_with_extension("rules1");
    let mut client = node.connect().unwrap();
    for name in ["n1", "node-2", "Ünïcode", "a much longer node name with spaces", "\"quoted\""] {
        let id: i64 =
            client.query_one("SELECT spock.node_create($1::name, 'dbname=postgres')::int8", &[&name]).unwrap().get(0);
        assert_eq!(id, i64::from(node_id_for_name(name)), "node id of {name:?}");
        let sets: Vec<(String, bool, bool, bool, bool)> = client
            .query(
                "SELECT set_name::text, replicate_insert, replicate_update, replicate_delete, replicate_truncate
                   FROM spock.replication_set WHERE set_nodeid = $1::int8::oid ORDER BY set_id",
                &[&id],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        let mut want: Vec<_> = NODE_DEFAULT_SETS
            .iter()
            .map(|s| {
                (s.name.to_string(), s.replicate_insert, s.replicate_update, s.replicate_delete, s.replicate_truncate)
            })
            .collect();
        let mut got = sets.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "default sets of {name:?}");
        client.execute("SELECT spock.node_drop($1::name)", &[&name]).unwrap();
    }
    // The helper itself on many names.
    let client = std::cell::RefCell::new(client);
    let stmt = client.borrow_mut().prepare("SELECT spock._node_id_for_name($1)::int8").unwrap();
    TestRunner::new(Config { cases: 200, ..Config::default() })
        .run(&"[^\u{0}]{0,80}", |s| {
            // (read as an Option and the input shown: once in a CI run a case gave
            // something that was not an int8, and the input was lost)
            let row = client.borrow_mut().query_one(&stmt, &[&s]).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            let id: Option<i64> = row.try_get(0).unwrap_or_else(|e| panic!("{s:?}: {e:?}"));
            prop_assert_eq!(id, Some(i64::from(node_id_for_name(&s))), "input {:?}", s);
            Ok(())
        })
        .unwrap();
}

#[test]
fn default_set_arguments_are_cores() {
    let node = node_with_extension("rules2");
    let all_defaults = format!("'{{{}}}'::text[]", NODE_DEFAULT_SETS.map(|s| s.name).join(","));
    let ddl_default = format!("'{{{REPLICATE_DDL_DEFAULT_SET}}}'::text[]");
    let args = |sig: &str| -> String {
        node.query_one(&format!("SELECT pg_get_function_arguments('{sig}'::regprocedure)")).unwrap()
    };
    let sub_create =
        args("spock.sub_create(name, text, text[], boolean, boolean, text[], interval, boolean, boolean, text[])");
    assert!(sub_create.contains(&format!("replication_sets text[] DEFAULT {all_defaults}")), "{sub_create}");
    for sig in ["spock.replicate_ddl(text, text[], text, text)", "spock.replicate_ddl(text[], text[], text, text)"] {
        let a = args(sig);
        assert!(a.contains(&format!("replication_sets text[] DEFAULT {ddl_default}")), "{sig}: {a}");
    }
}

/// The rows spock.queue has of `kind`, decoded by spock-core (and checked to be
/// byte for byte what spock-core writes).
fn queued(node: &TestNode, kind: &str) -> Vec<(Vec<String>, QueuedMessage)> {
    node.connect()
        .unwrap()
        .query(
            "SELECT replication_sets, message::text FROM spock.queue WHERE message_type = $1::text::\"char\" ORDER BY queued_at",
            &[&kind],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let json: String = r.get(1);
            let m = QueuedMessage::decode(kind.as_bytes()[0], &json).unwrap();
            assert_eq!(json, m.to_json(), "queued {kind} message is spock-core's layout");
            (r.get(0), m)
        })
        .collect()
}

#[test]
fn queued_table_sync_and_sequence_messages_are_cores() {
    let node = node_with_extension("rules3");
    node.execute(
        "SELECT spock.node_create('n1', 'dbname=postgres');
         CREATE SCHEMA \"Odd \"\"schema\";
         CREATE TABLE \"Odd \"\"schema\".\"t\\x\" (id int PRIMARY KEY);
         CREATE SEQUENCE \"Odd \"\"schema\".s START 40;
         SELECT nextval('\"Odd \"\"schema\".s');
         SELECT spock.repset_add_table('default', '\"Odd \"\"schema\".\"t\\x\"', synchronize_data := true);
         SELECT spock.repset_add_seq('default', '\"Odd \"\"schema\".s', synchronize_data := true);",
    )
    .unwrap();
    let a = queued(&node, "A");
    assert_eq!(
        a,
        vec![(
            vec!["default".to_string()],
            QueuedMessage::TableSync { schema: "Odd \"schema".into(), table: "t\\x".into() }
        )]
    );
    let cache: i32 = node.query_one("SELECT cache_size FROM spock.sequence_state").unwrap();
    assert_eq!(cache, SEQUENCE_SYNC_MARGIN);
    node.execute("SELECT spock.sync_seq('\"Odd \"\"schema\".s')").unwrap();
    let s = queued(&node, "S");
    let seq = |last_value| QueuedMessage::Sequence { schema: "Odd \"schema".into(), name: "s".into(), last_value };
    assert_eq!(
        s,
        vec![
            (vec!["default".to_string()], seq(40)),
            (vec!["default".to_string()], seq(40 + i64::from(SEQUENCE_SYNC_MARGIN))),
        ]
    );
    // sync_seq's target near the bounds, both directions.
    for (name, def, local) in [
        (
            "up",
            "INCREMENT 7 MAXVALUE 500 START 450",
            LocalSequence { last_value: 450, increment: 7, min_value: 1, max_value: 500 },
        ),
        (
            "down",
            "INCREMENT -1 MINVALUE -100 MAXVALUE -1 START -50",
            LocalSequence { last_value: -50, increment: -1, min_value: -100, max_value: -1 },
        ),
        (
            "top",
            "START 9223372036854775800",
            LocalSequence { last_value: i64::MAX - 7, increment: 1, min_value: 1, max_value: i64::MAX },
        ),
    ] {
        node.execute(&format!(
            "CREATE SEQUENCE public.{name} {def}; SELECT nextval('public.{name}');
             SELECT spock.repset_add_seq('default', 'public.{name}'); SELECT spock.sync_seq('public.{name}');"
        ))
        .unwrap();
        let announced: i64 = node
            .query_one(&format!("SELECT last_value FROM spock.sequence_state WHERE seqoid = 'public.{name}'::regclass"))
            .unwrap();
        assert_eq!(announced, sequence_sync_target(local, i64::from(SEQUENCE_SYNC_MARGIN)), "sequence {name}");
    }
}

#[test]
fn replica_identity_requirement_is_cores() {
    let node = node_with_extension("rules4");
    node.execute("SELECT spock.node_create('n1', 'dbname=postgres'); CREATE TABLE nopk (a int);").unwrap();
    for (i, (update, delete)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate() {
        let set = spock_core::repset::RepSet {
            id: 0,
            name: format!("s{i}"),
            replicate_insert: true,
            replicate_update: update,
            replicate_delete: delete,
            replicate_truncate: true,
        };
        node.execute(&format!(
            "SELECT spock.repset_create('{}', replicate_update := {update}, replicate_delete := {delete})",
            set.name
        ))
        .unwrap();
        let added = node.execute(&format!("SELECT spock.repset_add_table('{}', 'nopk')", set.name));
        assert_eq!(added.is_err(), set.needs_replica_identity(), "set {set:?}: {added:?}");
        let sql: bool =
            node.query_one(&format!("SELECT spock._set_needs_replica_identity({update}, {delete})")).unwrap();
        assert_eq!(sql, set.needs_replica_identity());
    }
    // repset_alter applies the same rule to the tables already in the set.
    let err = node.execute("SELECT spock.repset_alter('s0', replicate_delete := true)").unwrap_err();
    assert!(err.to_string().contains("without PRIMARY KEY"), "{err}");
}

#[test]
fn subscription_origins_are_cores() {
    let node = node_with_extension("rules5");
    let mut client = node.connect().unwrap();
    let slot = "spk_postgres_n1_sub1";
    for origin in [
        slot.to_string(),
        spock_core::names::forwarded_origin_name(slot, 0x1a2b),
        format!("{slot}_zzzz"),
        format!("{slot}_1a2"),
        format!("{slot}x"),
        "spk_postgres_n1_sub".to_string(),
    ] {
        let sql: bool =
            client.query_one("SELECT spock._is_subscription_origin($1, $2)", &[&slot, &origin]).unwrap().get(0);
        assert_eq!(sql, origin_node_of(slot, &origin).is_some(), "origin {origin:?}");
    }
}
